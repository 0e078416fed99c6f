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
from seg_ssl.losses.pseudo_labels import (
    box_mixed_targets,
    pseudo_label_accuracy,
    pseudo_label_stats,
    pseudo_labels,
    weak_to_strong_loss,
)
from seg_ssl.methods.base import FG_MARGINAL, WeakToStrong, pasted_targets, strong_view_fields, warmup_fields
from seg_ssl.models.segmentor import logits
from seg_ssl.schema import NUM, field


class FixMatch(WeakToStrong):
    name = "fixmatch"
    views = 1
    config_section = {  # defaults are the UniMatch release's fixmatch.py with configs/pascal.yaml
        "conf_thresh": field(NUM, 0.95, doc="pseudo labels below this confidence are ignored"),
        **strong_view_fields("the strong view"),
        **warmup_fields(" (none in the release)"),
        "fg_marginal": FG_MARGINAL,
    }

    def consistency_step(self, model, labeled: dict, own: dict, pasted: dict, lam: float) -> dict:
        c = self.c
        x_l, y, weak, valid = labeled["image"], labeled["label"], own["image"], own["valid"]
        nl, nu = x_l.shape[0], weak.shape[0]
        box = single_box_masks(nu, *weak.shape[-2:], c.cutmix_p, c.box_size_range, c.box_ratio_range,
                               self.mask_rng).to(weak.device)
        mix_target, mix_conf = pasted_targets(model, pasted["image"], c.fg_marginal)
        strong = mix(own["strong"], pasted["strong"], box)
        # as released, [labeled + weak] and [strong] apart (BatchNorm statistics per group)
        out = logits(model, torch.cat([x_l, weak, strong]), groups=self.groups(nl + nu, nu))
        clean, logits_s = out[:nl + nu], out[nl + nu:]
        sup = self.supervised_loss(clean[:nl], y)
        # the weak view's targets, without gradient; inside the box, the pasted image's
        target, conf = pseudo_labels(clean[nl:], fg_marginal=c.fg_marginal, return_conf=True)
        t, cf, v = box_mixed_targets(target, conf, valid, mix_target, mix_conf, pasted["valid"], box)
        loss_s = weak_to_strong_loss(logits_s, t, cf, v, c.conf_thresh)
        kept = target.masked_fill(~(valid & (conf >= c.conf_thresh)), self.ignore_index)
        out = {"loss": (sup + lam * loss_s) / 2, "sup": sup.detach(), "strong": loss_s.detach(),
               **pseudo_label_stats(kept, valid, self.cfg.data.num_classes, self.ignore_index,
                                    self.background)}
        if "label" in own:  # hidden truth of the unlabeled images (benchmarks): how right are the targets?
            out.update(pseudo_label_accuracy(target, own["label"], valid, kept != self.ignore_index,
                                             self.ignore_index, self.background))
        return out
