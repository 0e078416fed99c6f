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

import torch

from seg_ssl.data.cutmix import mix, single_box_masks
from seg_ssl.losses.pseudo_labels import (
    box_mixed_targets,
    pseudo_label_accuracy,
    pseudo_label_stats,
    pseudo_labels,
    weak_to_strong_loss,
)
from seg_ssl.methods.base import FG_MARGINAL, WeakToStrong, pasted_targets, strong_view_fields, warmup_fields
from seg_ssl.models.segmentor import logits, logits_and_perturbed
from seg_ssl.schema import NUM, field


class UniMatch(WeakToStrong):
    name = "unimatch"
    views = 2
    config_section = {  # Yang et al., CVPR 2023; defaults are the published VOC run
        "conf_thresh": field(NUM, 0.95,
                             doc="pseudo labels below this confidence are ignored (Cityscapes: 0)"),
        "weight_strong": field(NUM, 0.25, doc="weight of each strong view's loss"),
        "weight_fp": field(NUM, 0.5, doc="weight of the feature-perturbed stream's loss"),
        "fp_dropout": field(NUM, 0.5, doc="channel dropout on the encoder maps of the perturbed stream"),
        **strong_view_fields("each strong view"),
        **warmup_fields(" (none in the paper)"),
        "fg_marginal": FG_MARGINAL,
    }

    def consistency_step(self, model, labeled: dict, own: dict, pasted: dict, lam: float) -> dict:
        c = self.c
        x_l, y, weak, valid = labeled["image"], labeled["label"], own["image"], own["valid"]
        nl, nu, (h, w) = x_l.shape[0], weak.shape[0], weak.shape[-2:]
        box1, box2 = (single_box_masks(nu, h, w, c.cutmix_p, c.box_size_range, c.box_ratio_range,
                                       self.mask_rng).to(weak.device) for _ in range(2))
        mix_target, mix_conf = pasted_targets(model, pasted["image"], c.fg_marginal)
        strong1 = mix(own["strong1"], pasted["strong1"], box1)
        strong2 = mix(own["strong2"], pasted["strong2"], box2)

        if self.cfg.train.joint_forward:
            # one batch for BatchNorm; the decoder's perturbed pass runs on the weak rows alone (the
            # other rows' would be dropped unused)
            out = logits_and_perturbed(model, torch.cat([x_l, weak, strong1, strong2]), c.fp_dropout,
                                       rows=(nl, nl + nu))
            clean, logits_fp = out["logits"], out["logits_fp"]
            logits_s1, logits_s2 = clean[nl + nu:].chunk(2)
            clean = clean[:nl + nu]
        else:  # as released: [labeled + weak (+ perturbed)] and [strong 1 + strong 2] apart
            out = logits_and_perturbed(model, torch.cat([x_l, weak]), c.fp_dropout)
            clean, logits_fp = out["logits"], out["logits_fp"][nl:]
            logits_s1, logits_s2 = logits(model, torch.cat([strong1, strong2])).chunk(2)
        sup = self.supervised_loss(clean[:nl], y)
        # the weak view's targets, without gradient
        target, conf = pseudo_labels(clean[nl:], fg_marginal=c.fg_marginal, return_conf=True)
        t1, c1, v1 = box_mixed_targets(target, conf, valid, mix_target, mix_conf, pasted["valid"], box1)
        t2, c2, v2 = box_mixed_targets(target, conf, valid, mix_target, mix_conf, pasted["valid"], box2)
        loss_s1 = weak_to_strong_loss(logits_s1, t1, c1, v1, c.conf_thresh)
        loss_s2 = weak_to_strong_loss(logits_s2, t2, c2, v2, c.conf_thresh)
        loss_fp = weak_to_strong_loss(logits_fp, target, conf, valid, c.conf_thresh)
        unsup = c.weight_strong * (loss_s1 + loss_s2) + c.weight_fp * loss_fp
        kept = target.masked_fill(~(valid & (conf >= c.conf_thresh)), self.ignore_index)
        out = {"loss": (sup + lam * unsup) / 2, "sup": sup.detach(), "strong1": loss_s1.detach(),
               "strong2": loss_s2.detach(), "fp": loss_fp.detach(),
               **pseudo_label_stats(kept, valid, self.cfg.data.num_classes, self.ignore_index,
                                    self.background)}
        if "label" in own:  # hidden truth of the unlabeled images (benchmarks): how right are the targets?
            out.update(pseudo_label_accuracy(target, own["label"], valid, kept != self.ignore_index,
                                             self.ignore_index, self.background))
        return out
