"""UniMatch V2: Pushing the Limit of Semi-Supervised Semantic Segmentation (Yang et al., TPAMI
2025), as its release's ``unimatch_v2.py`` trains it.

An EMA teacher (``seg_ssl.models.ema``: after each step it keeps ``min(1 - 1/(it+1), 0.996)`` of
itself) predicts the weak view of each unlabeled image in eval mode: hard pseudo labels and their
confidences. Each image also comes as two strong views of the same crop (colour jitter, grayscale,
blur); each view gets, with probability 1/2, a CutMix box pasted from the *same batch in reversed
order* (image j takes image B-1-j's view inside the box, and its targets), so no second batch is
drawn. The student sees the labeled batch alone, then both strong views in one forward with
complementary channel dropout where the encoder meets the decoder: for image j of view 1 a random
half of the channels is dropped and the rest doubled, for image j of view 2 exactly the other half
(masks of 0 and 2 that sum to 2); half of the pairs, drawn at random, keep every channel.

    loss = (CE(labeled) + (L(strong 1) + L(strong 2)) / 2) / 2

where each L is the cross-entropy over pixels whose target confidence is >= ``conf_thresh``,
divided by all valid (non-padding) pixels (:func:`weak_to_strong_loss`). On DINOv2 (``dpt_unimatch_v2``)
one mask acts on all four tapped blocks, as released; on a CNN each encoder map gets its own draw,
the kept pairs shared (the release's ResNet runs, issue #7: a mask per level).
"""
from __future__ import annotations

import numpy as np
import torch

from seg_ssl.data.cutmix import mix, single_box_masks
from seg_ssl.losses.pseudo_labels import (
    box_mixed_targets,
    pseudo_label_accuracy,
    pseudo_label_stats,
    pseudo_labels,
    weak_to_strong_loss,
)
from seg_ssl.methods.base import (
    FG_MARGINAL,
    SemiSupervised,
    strong_view_fields,
    warmup_fields,
    weak_strong_pipeline,
)
from seg_ssl.models.segmentor import logits, logits_with_channel_masks
from seg_ssl.schema import NUM, field


def complementary_masks(pairs: int, channels: list[int], kept_share: float, rng: np.random.Generator):
    """Channel masks of ``2 x pairs`` images, one (2 pairs, C) tensor per entry of ``channels``:
    rows j and pairs + j are complements in {0, 2} (each channel kept and doubled in one of the
    two, dropped in the other), except ``int(pairs x kept_share)`` pairs drawn at random, which
    are all ones in every entry (the release's ``dpt.py`` with ``comp_drop``)."""
    kept = rng.permutation(pairs)[:int(pairs * kept_share)]
    masks = []
    for c in channels:
        first = rng.integers(0, 2, (pairs, c)).astype(np.float32) * 2.0
        second = 2.0 - first
        first[kept], second[kept] = 1.0, 1.0
        masks.append(torch.from_numpy(np.concatenate([first, second])))
    return masks


class UniMatchV2(SemiSupervised):
    name = "unimatch_v2"
    trains_teacher = True
    config_section = {  # Yang et al., TPAMI 2025; defaults are the release's configs/pascal.yaml
        "conf_thresh": field(NUM, 0.95, doc="pseudo labels below this confidence are ignored"),
        **strong_view_fields("each strong view (the box from the same batch in reversed order)"),
        "comp_drop": field(bool, True, doc="complementary channel dropout on the two strong views"),
        "comp_drop_kept": field(NUM, 0.5, doc="share of the pairs of strong views left without dropout"),
        **warmup_fields(" (none in the release)"),
        "fg_marginal": FG_MARGINAL,
    }
    loss_scale_note = ("loss = (sup + (strong1 + strong2) / 2) / 2, as in the UniMatch V2 release, so in a "
                       "warm-up loss is half of sup; compare sup with labeled-only's loss")

    def unlabeled_pipeline(self, d):
        return weak_strong_pipeline(self.c, d, views=2)

    def training_step(self, model, labeled: dict, unlabeled: dict | None, iteration: int) -> dict:
        c, lam = self.c, self.ramp(iteration)
        if lam == 0.0:  # labeled-only warm-up, on the same scale as the full loss
            return self.warm_up(model, labeled, scale=0.5)
        x_l, y, u = labeled["image"], labeled["label"], unlabeled
        weak, valid = u["image"], u["valid"]
        nl, nu, (h, w) = x_l.shape[0], weak.shape[0], weak.shape[-2:]
        with torch.no_grad():  # the teacher's targets for the weak view (it is in eval mode)
            target, conf = pseudo_labels(logits(self.teacher, weak), fg_marginal=c.fg_marginal,
                                         return_conf=True)
        box1, box2 = (single_box_masks(nu, h, w, c.cutmix_p, c.box_size_range, c.box_ratio_range,
                                       self.mask_rng).to(weak.device) for _ in range(2))
        # in-batch CutMix, as released: inside its box image j shows image nu-1-j
        strong1 = mix(u["strong1"], u["strong1"].flip(0), box1)
        strong2 = mix(u["strong2"], u["strong2"].flip(0), box2)
        channels = self.teacher.mask_channels  # the teacher is a plain copy of the model
        masks = (complementary_masks(nu, channels, c.comp_drop_kept, self.mask_rng) if c.comp_drop
                 else [torch.ones(2 * nu, k) for k in channels])
        masks = [torch.cat([torch.ones(nl, m.shape[1]), m]).to(weak.device) for m in masks]  # labeled rows: 1
        # as released, the labeled batch and the two strong views apart (BatchNorm statistics per group)
        out = logits_with_channel_masks(model, torch.cat([x_l, strong1, strong2]), masks,
                                        groups=self.groups(nl, 2 * nu))
        logits_s1, logits_s2 = out[nl:].chunk(2)
        sup = self.supervised_loss(out[:nl], y)
        t1, c1, v1 = box_mixed_targets(target, conf, valid, target.flip(0), conf.flip(0), valid.flip(0), box1)
        t2, c2, v2 = box_mixed_targets(target, conf, valid, target.flip(0), conf.flip(0), valid.flip(0), box2)
        loss_s1 = weak_to_strong_loss(logits_s1, t1, c1, v1, c.conf_thresh)
        loss_s2 = weak_to_strong_loss(logits_s2, t2, c2, v2, c.conf_thresh)
        kept = target.masked_fill(~(valid & (conf >= c.conf_thresh)), self.ignore_index)
        out = {"loss": (sup + lam * (loss_s1 + loss_s2) / 2) / 2, "sup": sup.detach(),
               "strong1": loss_s1.detach(), "strong2": loss_s2.detach(),
               **pseudo_label_stats(kept, valid, self.cfg.data.num_classes, self.ignore_index,
                                    self.background)}
        if "label" in u:
            # hidden truth of the unlabeled images (benchmarks): how right are the teacher's targets?
            out.update(pseudo_label_accuracy(target, u["label"], valid, kept != self.ignore_index,
                                             self.ignore_index, self.background))
        return out

