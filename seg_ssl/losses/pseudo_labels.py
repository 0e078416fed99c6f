"""Pseudo labels: how methods make them from a teacher's logits, the loss on them, and what they
look like during training (pure functions, tensors in and out, below every method).

``pseudo_labels`` turns logits into hard labels and confidences; ``weak_to_strong_loss`` is the
thresholded cross-entropy of the UniMatch release family (FixMatch, UniMatch); ``box_mixed_targets``
gives a CutMix-boxed view its targets. ``pseudo_label_stats`` needs no truth: class shares of the
kept pseudo labels (a drift towards background is how CPS collapses) and the share of valid pixels
that keep one. ``pseudo_label_accuracy`` scores them against the true labels of the "unlabeled"
images, where a benchmark has them (``data.unlabeled_truth``): a method whose pseudo labels get
worse than its warm-up teacher's is the first thing to look at.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pseudo_labels(logits, valid=None, ignore_index: int = 255, conf_thresh: float = 0.0, align=None,
                  fg_marginal: bool = False, return_conf: bool = False):
    """Hard pseudo labels (B, H, W) from teacher logits (B, K, H, W), without gradient; with
    ``return_conf`` also each pixel's confidence (B, H, W), as the threshold sees it.

    ``valid`` (B, H, W) bool marks pixels that may get a pseudo label (False on padding);
    ``conf_thresh`` > 0 also drops unconfident ones. ``align`` (K,) multiplies the probabilities
    before the decision (distribution alignment). ``fg_marginal``: class 0 is background; a pixel is
    background only where its probability beats all foreground classes together (p0 >= 0.5), else
    it takes the likeliest foreground class. The plain argmax calls a pixel background whenever the
    foreground mass is spread over several classes, which biases pseudo labels towards background.
    Its confidence is then p0 for background and p(class | foreground) = p_k / (1 - p0) for a
    foreground class, so a threshold drops foreground pixels whose class is uncertain without
    turning them into background.
    """
    with torch.no_grad():
        prob = logits.detach().float().softmax(1)
        if align is not None:
            prob = prob * align.view(1, -1, 1, 1)
            prob = prob / prob.sum(1, keepdim=True)
        if fg_marginal:
            p_bg = prob[:, 0]
            is_bg = p_bg >= 0.5
            p_fg_top, fg_class = prob[:, 1:].max(1)
            label = torch.where(is_bg, 0, fg_class + 1)
            conf = torch.where(is_bg, p_bg, p_fg_top / (1 - p_bg).clamp_min(1e-12))
        else:
            conf, label = prob.max(1)
        if valid is not None:
            label = label.masked_fill(~valid, ignore_index)
        if conf_thresh > 0:
            label = label.masked_fill(conf < conf_thresh, ignore_index)
    return (label, conf) if return_conf else label


def weak_to_strong_loss(student_logits: torch.Tensor, target: torch.Tensor, conf: torch.Tensor,
                        valid: torch.Tensor, conf_thresh: float) -> torch.Tensor:
    """Sum of the per-pixel CE of ``student_logits`` (B, K, H, W) against ``target`` (B, H, W, a
    class everywhere) over pixels that are ``valid`` with ``conf`` >= ``conf_thresh``, divided by
    the number of valid pixels (not of kept ones: few confident pixels make a small loss, as released)."""
    ce = F.cross_entropy(student_logits.float(), target, reduction="none")
    kept = valid & (conf >= conf_thresh)
    return (ce * kept).sum() / valid.sum().clamp_min(1)


def box_mixed_targets(target, conf, valid, target_mix, conf_mix, valid_mix, box):
    """The targets of a strong view with a CutMix box: the weak prediction of the image itself
    outside the box, of the pasted image inside it (labels, confidences and valid masks alike)."""
    inside = box > 0.5
    return (torch.where(inside, target_mix, target), torch.where(inside, conf_mix, conf),
            torch.where(inside, valid_mix, valid))


def pseudo_label_stats(targets: torch.Tensor, valid: torch.Tensor, num_classes: int,
                       ignore_index: int = 255, background: bool = True) -> dict:
    """``targets`` (B, H, W) pseudo labels with ``ignore_index`` where none is kept; ``valid``
    (B, H, W) bool, the pixels that could have one. Returns ``pseudo_kept`` (kept / valid),
    ``pseudo_bg`` (class 0's share of the kept ones, when class 0 is background) and
    ``pseudo_cls/k`` per class (keys with a "/" go to TensorBoard only)."""
    kept = targets[(targets != ignore_index) & valid]
    share = torch.bincount(kept, minlength=num_classes)[:num_classes].float() / max(kept.numel(), 1)
    out = {"pseudo_kept": kept.numel() / max(int(valid.sum()), 1)}
    if background:
        out["pseudo_bg"] = share[0]
    out.update({f"pseudo_cls/{i}": share[i] for i in range(num_classes)})
    return out


def pseudo_label_accuracy(pred: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor,
                          kept: torch.Tensor | None = None, ignore_index: int = 255,
                          background: bool = True) -> dict:
    """Pseudo labels ``pred`` (B, H, W) against ``truth``: ``pl_acc`` over valid pixels with a true
    label; ``pl_fg_acc`` over true foreground pixels (class 0 is background), the share of objects
    named right; ``pl_kept_acc`` over the ``kept`` pixels (those a threshold lets through). A share
    with nothing to count is left out (the log averages each key over the steps that have it)."""
    known = valid & (truth != ignore_index)
    right = pred == truth
    masks = {"pl_acc": known}
    if background:
        masks["pl_fg_acc"] = known & (truth > 0)
    if kept is not None:
        masks["pl_kept_acc"] = known & kept
    counts = torch.stack([m.sum() for m in masks.values()])
    hits = torch.stack([(right & m).sum() for m in masks.values()])
    present = (counts > 0).tolist()  # one transfer; only benchmarks (data.unlabeled_truth) pay it
    share = hits.float() / counts.clamp_min(1)
    return {k: share[i] for i, k in enumerate(masks) if present[i]}
