"""UniMatch: Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic Segmentation
(Yang et al., CVPR 2023).

Each unlabeled image comes as one weak view (rescale, crop, flip) and two strong views of the same
crop (colour jitter, grayscale, blur). The weak view's prediction, without gradient, gives hard
pseudo labels and their confidence. Each strong view gets, with probability 1/2, a CutMix box
pasted from a second unlabeled image; inside the box its target is that image's weak prediction
(made with the network in eval mode, as released). A third stream perturbs features instead of
images: the decoder also reads the weak view's encoder maps with half their channels dropped.

    loss = (CE(labeled) + 0.25 L(strong 1) + 0.25 L(strong 2) + 0.5 L(feature-perturbed)) / 2

where each L is the cross-entropy over pixels whose target confidence is >= ``conf_thresh``,
divided by all valid (non-padding) pixels (:func:`weak_to_strong_loss`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from seg_ssl.config import ConfigError
from seg_ssl.data.cutmix import mix, single_box_masks
from seg_ssl.data.transforms import WeakStrongPipeline, photometric_ops
from seg_ssl.engine.schedule import warmup_ramp
from seg_ssl.losses.ohem import ohem_cross_entropy
from seg_ssl.evaluation.pseudo_labels import first_class_is_background, pseudo_label_accuracy, pseudo_label_stats
from seg_ssl.methods.cps import pseudo_labels
from seg_ssl.methods.supervised import Supervised


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


class UniMatch(Supervised):
    uses_unlabeled = True

    @staticmethod
    def unlabeled_draws(cfg) -> int:
        """Unlabeled images drawn per output image: each is mixed with a box from a second one."""
        return 2

    def __init__(self, cfg):
        super().__init__(cfg)
        self.c = cfg.unimatch
        self.mask_rng = np.random.default_rng(cfg.seed)
        self.background = first_class_is_background(cfg.data.class_names)
        if self.c.fg_marginal and cfg.data.class_names and not self.background:
            raise ConfigError(f"unimatch.fg_marginal needs class 0 to be background; data.class_names[0] is "
                              f"{cfg.data.class_names[0]!r}")

    def unlabeled_pipeline(self, d):
        c = self.c
        strong = photometric_ops(c.color_jitter, c.grayscale, c.blur, jitter=c.jitter_strength, blur_limit=0)
        return WeakStrongPipeline(d, strong, labeled=d.unlabeled_truth)

    def weight(self, iteration: int) -> float:
        return warmup_ramp(iteration, self.c.unsup_start_iter, self.c.rampup_iters)

    def supervised_loss(self, logits, label):
        if self.c.ohem:  # min_kept per labeled image (the release keeps 200,000 per GPU batch of 2)
            return ohem_cross_entropy(logits, label, self.c.ohem_thresh, self.c.ohem_min_kept * logits.shape[0],
                                      self.ignore_index)
        return F.cross_entropy(logits, label, ignore_index=self.ignore_index)

    def training_step(self, model, labeled: dict, unlabeled: dict | None, iteration: int) -> dict:
        c = self.c
        x_l, y = labeled["image"], labeled["label"]
        nl = x_l.shape[0]
        lam = self.weight(iteration)
        if lam == 0.0:  # labeled-only warm-up, on the same scale as the full loss
            sup = self.supervised_loss(model(x_l), y)
            return {"loss": sup / 2, "sup": sup}
        u = unlabeled
        nu = u["image"].shape[0] // 2  # the second half are the images the boxes come from
        weak, weak_mix = u["image"][:nu], u["image"][nu:]
        valid, valid_mix = u["valid"][:nu], u["valid"][nu:]
        h, w = weak.shape[-2:]
        box1, box2 = (single_box_masks(nu, h, w, c.cutmix_p, c.box_size_range, c.box_ratio_range,
                                       self.mask_rng).to(weak.device) for _ in range(2))
        with torch.no_grad():  # the pasted images' targets, from the network in eval mode (released)
            model.eval()
            mix_target, mix_conf = pseudo_labels(model(weak_mix), fg_marginal=c.fg_marginal, return_conf=True)
            model.train()
        strong1 = mix(u["strong1"][:nu], u["strong1"][nu:], box1)
        strong2 = mix(u["strong2"][:nu], u["strong2"][nu:], box2)

        if self.cfg.train.joint_forward:  # one batch for BatchNorm; only the weak rows' perturbed stream is used
            out = model(torch.cat([x_l, weak, strong1, strong2]), fp_dropout=c.fp_dropout)
            logits, logits_fp = out["logits"], out["logits_fp"][nl:nl + nu]
            logits_s1, logits_s2 = logits[nl + nu:].chunk(2)
            logits = logits[:nl + nu]
        else:  # as released: [labeled + weak (+ perturbed)] and [strong 1 + strong 2] apart
            out = model(torch.cat([x_l, weak]), fp_dropout=c.fp_dropout)
            logits, logits_fp = out["logits"], out["logits_fp"][nl:]
            logits_s1, logits_s2 = model(torch.cat([strong1, strong2])).chunk(2)
        sup = self.supervised_loss(logits[:nl], y)
        # the weak view's targets, without gradient
        target, conf = pseudo_labels(logits[nl:], fg_marginal=c.fg_marginal, return_conf=True)
        t1, c1, v1 = box_mixed_targets(target, conf, valid, mix_target, mix_conf, valid_mix, box1)
        t2, c2, v2 = box_mixed_targets(target, conf, valid, mix_target, mix_conf, valid_mix, box2)
        loss_s1 = weak_to_strong_loss(logits_s1, t1, c1, v1, c.conf_thresh)
        loss_s2 = weak_to_strong_loss(logits_s2, t2, c2, v2, c.conf_thresh)
        loss_fp = weak_to_strong_loss(logits_fp, target, conf, valid, c.conf_thresh)
        unsup = c.weight_strong * (loss_s1 + loss_s2) + c.weight_fp * loss_fp
        kept = target.masked_fill(~(valid & (conf >= c.conf_thresh)), self.ignore_index)
        out = {"loss": (sup + lam * unsup) / 2, "sup": sup.detach(), "strong1": loss_s1.detach(),
               "strong2": loss_s2.detach(), "fp": loss_fp.detach(),
               **pseudo_label_stats(kept, valid, self.cfg.data.num_classes, self.ignore_index, self.background)}
        if "label" in u:  # hidden truth of the unlabeled images (benchmarks): how right are the targets?
            out.update(pseudo_label_accuracy(target, u["label"][:nu], valid, kept != self.ignore_index,
                                             self.ignore_index, self.background))
        return out

    def state_dict(self) -> dict:
        return {"mask_rng": self.mask_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if "mask_rng" in state:
            self.mask_rng.bit_generator.state = state["mask_rng"]
