"""Toy networks, toy batches and brute-force references the method tests share: every expected
value a method test asserts is recomputed here from the formula, pixel by pixel, independently of
the code under test."""
import math

import numpy as np
import torch
import torch.nn as nn

FP_CHANNELS = torch.tensor([0.0, 2.0, 0.0]).view(1, 3, 1, 1)  # ToyNet's fixed feature perturbation


class ToyNet(nn.Module):
    """logits = 1x1 conv of the image; the perturbed stream drops fixed channels (deterministic), so
    a test can recompute every term. ``groups`` runs each part of the batch on its own, as
    Segmentor does. Records each call's mode, batch size and dropout."""

    size_divisor = 1
    mask_channels = [3]  # channel masks act on the image's channels, the toy's only "encoder map"

    def __init__(self, k=3):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, k, 1)
        self.calls = []

    def forward(self, x, output="logits", groups=None, fp_dropout=0.0, channel_masks=None, fp_rows=None):
        if groups is not None:
            masks = (channel_masks[0].split(list(groups)) if channel_masks is not None
                     else [None] * len(groups))
            parts = [self(part, output, fp_dropout=fp_dropout, channel_masks=None if m is None else [m])
                     for part, m in zip(x.split(list(groups)), masks, strict=True)]
            return torch.cat(parts)  # the toy's grouped calls return logits only
        fp_dropout = fp_dropout if output == "fp" else 0.0
        self.calls.append(("train" if self.training else "eval", x.shape[0], fp_dropout))
        if channel_masks is not None:
            x = x * channel_masks[0][:, :, None, None]
        logits = self.conv(x)
        if fp_dropout:
            rows = slice(*fp_rows) if fp_rows is not None else slice(None)
            self.last = {"logits": logits, "logits_fp": self.conv(x[rows] * FP_CHANNELS)}
            for t in self.last.values():
                t.retain_grad()
            return self.last
        if self.training:
            logits.retain_grad()
            self.strong_logits = logits
        return logits


def toy_batches(nl=2, nu=2, h=4, w=5, strong=("strong1", "strong2")):
    """A labeled batch (one ignored pixel) and an unlabeled one of 2 x nu images (the second half
    are the images CutMix boxes come from) with the strong views named ``strong``, and padding."""
    g = torch.Generator().manual_seed(2)
    labeled = {"image": torch.randn(nl, 3, h, w, generator=g),
               "label": torch.randint(0, 3, (nl, h, w), generator=g)}
    labeled["label"][0, 0, 0] = 255
    unl = {k: torch.randn(2 * nu, 3, h, w, generator=g) for k in ("image", "strong1", "strong2")}
    unl = {("image" if k == "image" else new): unl[k]
           for k, new in zip(("image", "strong1", "strong2"), ("image", *strong), strict=True) if new}
    unl["valid"] = torch.ones(2 * nu, h, w, dtype=torch.bool)
    unl["valid"][0, -1] = False  # padding in a weak image
    unl["valid"][nu, :, -1] = False  # and in an image the boxes come from
    return labeled, unl


def log_softmax_at(logits, b, k, i, j):
    z = [logits[b, c, i, j].item() for c in range(logits.shape[1])]
    return z[k] - math.log(sum(math.exp(v) for v in z))


def ce_terms(logits, target, conf, valid, thresh):
    """The released weak-to-strong loss by brute force: the cross-entropy of every valid pixel whose
    confidence reaches ``thresh``, summed, over the number of valid pixels (a loop over pixels)."""
    total, n_valid = 0.0, 0
    b, _, h, w = logits.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                if valid[i, y, x]:
                    n_valid += 1
                    if conf[i, y, x] >= thresh:
                        total -= log_softmax_at(logits, i, int(target[i, y, x]), y, x)
    return total / n_valid


def hard_targets(prob, fg_marginal):
    """(confidence, label) per pixel: the argmax, or with ``fg_marginal`` background where p0 >= 0.5
    and otherwise the likeliest foreground class with confidence p(class | foreground)."""
    if not fg_marginal:
        return prob.max(1)
    p_fg, k = prob[:, 1:].max(1)
    bg = prob[:, 0] >= 0.5
    return torch.where(bg, prob[:, 0], p_fg / (1 - prob[:, 0])), torch.where(bg, 0, k + 1)


def brute_force_miou(predict, dataset, num_classes: int, ignore_index: int = 255,
                     batch_size: int = 1) -> float:
    """mIoU counted class by class over every pixel of ``dataset`` (the definition, no confusion
    matrix): IoU_c = |pred = c and gt = c| / |pred = c or gt = c| over non-ignored pixels, summed over
    the whole set; classes absent from both are left out of the mean. Images are predicted in
    batches of ``batch_size`` in order, as the evaluator batches them, so the logits are the same."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            preds = predict(torch.stack([it["image"] for it in items])).argmax(1).numpy()
            for pred, item in zip(preds, items, strict=True):
                gt = np.asarray(item["label"])
                keep = gt != ignore_index
                for c in range(num_classes):
                    p, g = (pred == c) & keep, gt == c
                    inter[c] += (p & g).sum()
                    union[c] += (p | g).sum()
    present = union > 0
    return float((inter[present] / union[present]).mean())
