"""FixMatch for segmentation, as the UniMatch release's ``fixmatch.py`` (Sohn et al., NeurIPS 2020;
the baseline UniMatch builds on, Yang et al., CVPR 2023).

Each unlabeled image comes as one weak view (rescale, crop, flip) and one strong view of the same
crop (colour jitter, grayscale, blur). The weak view's prediction, without gradient, gives hard
pseudo labels and their confidence. With probability 1/2 the strong view gets a CutMix box pasted
from a second unlabeled image; inside the box its target is that image's weak prediction, made
with the network in eval mode (as released).

    loss = (CE(labeled) + L(strong)) / 2

where L is the cross-entropy over pixels whose target confidence is >= ``conf_thresh``, divided by
all valid (non-padding) pixels (``seg_ssl.losses.pseudo_labels.weak_to_strong_loss``). UniMatch is
this with a second strong view and a feature-perturbed stream.
"""
from __future__ import annotations

import torch

from seg_ssl.data.cutmix import mix, single_box_masks
from seg_ssl.losses.pseudo_labels import (box_mixed_targets, pseudo_label_accuracy, pseudo_label_stats, pseudo_labels,
                                          weak_to_strong_loss)
from seg_ssl.methods.base import (FG_MARGINAL, SemiSupervised, pasted_targets, strong_view_fields, warmup_fields,
                                  weak_strong_pipeline)
from seg_ssl.models.segmentor import logits
from seg_ssl.schema import NUM, field


class FixMatch(SemiSupervised):
    name = "fixmatch"
    config_section = {  # defaults are the UniMatch release's fixmatch.py with configs/pascal.yaml
        "conf_thresh": field(NUM, 0.95, doc="pseudo labels below this confidence are ignored"),
        **strong_view_fields("the strong view"),
        **warmup_fields(" (none in the release)"),
        "fg_marginal": FG_MARGINAL,
    }
    loss_scale_note = ("loss = (sup + unsup) / 2, as in the UniMatch release's fixmatch.py, so in the warm-up loss "
                       "is half of sup; compare sup with labeled-only's loss")

    @classmethod
    def unlabeled_draws(cls, cfg) -> int:
        """Unlabeled images drawn per output image: each may get a box from a second one."""
        return 2

    def unlabeled_pipeline(self, d):
        return weak_strong_pipeline(self.c, d, views=1)

    def training_step(self, model, labeled: dict, unlabeled: dict | None, iteration: int) -> dict:
        c = self.c
        x_l, y = labeled["image"], labeled["label"]
        nl = x_l.shape[0]
        lam = self.ramp(iteration)
        if lam == 0.0:  # labeled-only warm-up, on the same scale as the full loss
            sup = self.supervised_loss(logits(model, x_l), y)
            return {"loss": sup / 2, "sup": sup}
        u = unlabeled
        nu = u["image"].shape[0] // 2  # the second half are the images the boxes come from
        weak, weak_mix = u["image"][:nu], u["image"][nu:]
        valid, valid_mix = u["valid"][:nu], u["valid"][nu:]
        box = single_box_masks(nu, *weak.shape[-2:], c.cutmix_p, c.box_size_range, c.box_ratio_range,
                               self.mask_rng).to(weak.device)
        mix_target, mix_conf = pasted_targets(model, weak_mix, c.fg_marginal)
        strong = mix(u["strong"][:nu], u["strong"][nu:], box)
        # as released, [labeled + weak] and [strong] apart (BatchNorm statistics per group)
        out = logits(model, torch.cat([x_l, weak, strong]), groups=self.groups(nl + nu, nu))
        clean, logits_s = out[:nl + nu], out[nl + nu:]
        sup = self.supervised_loss(clean[:nl], y)
        # the weak view's targets, without gradient; inside the box, the pasted image's
        target, conf = pseudo_labels(clean[nl:], fg_marginal=c.fg_marginal, return_conf=True)
        t, cf, v = box_mixed_targets(target, conf, valid, mix_target, mix_conf, valid_mix, box)
        loss_s = weak_to_strong_loss(logits_s, t, cf, v, c.conf_thresh)
        kept = target.masked_fill(~(valid & (conf >= c.conf_thresh)), self.ignore_index)
        out = {"loss": (sup + lam * loss_s) / 2, "sup": sup.detach(), "strong": loss_s.detach(),
               **pseudo_label_stats(kept, valid, self.cfg.data.num_classes, self.ignore_index, self.background)}
        if "label" in u:  # hidden truth of the unlabeled images (benchmarks): how right are the targets?
            out.update(pseudo_label_accuracy(target, u["label"][:nu], valid, kept != self.ignore_index,
                                             self.ignore_index, self.background))
        return out
