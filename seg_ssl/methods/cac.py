"""CAC: Semi-Supervised Semantic Segmentation with Directional Context-aware Consistency
(Lai et al., CVPR 2021).

Each unlabeled image gives two overlapping crops (IoU in ``cac.iou_bound``) with different context.
The same pixel seen from both crops should embed alike (projector features at stride 8), and unlike
negatives of other pseudo classes. The direction matters: only the less confident crop is pulled,
towards the more confident one, and only where that one is confident (``pos_thresh``).

    loss = CE(labeled) + weight_unsup x ramp(it) x (L1 + L2)        (seg_ssl.losses.contrastive)
"""
from __future__ import annotations

import collections
import logging

import numpy as np
import torch
import torch.nn.functional as F

from seg_ssl.collectives import all_gather_rows
from seg_ssl.data.overlap import CropPairPipeline, pair_offsets
from seg_ssl.errors import ConfigError
from seg_ssl.losses.contrastive import directional_contrastive_loss
from seg_ssl.losses.pseudo_labels import pseudo_label_accuracy
from seg_ssl.methods.base import SemiSupervised, warmup_fields
from seg_ssl.models.segmentor import build_segmentor, logits_and_projection
from seg_ssl.schema import NUM, field

LOG = logging.getLogger("seg_ssl")


def unflip(t: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Undo horizontal flips per sample: ``t`` is (B, ..., W), ``flipped`` (B,) bool."""
    shape = (-1,) + (1,) * (t.dim() - 1)
    return torch.where(flipped.view(shape), t.flip(-1), t)


def align_overlap(box1: torch.Tensor, box2: torch.Tensor, size: int, stride: int):
    """Vectorised overlap alignment on the ``size x size`` feature grid.

    ``box1``/``box2`` (B, 4) are the shared region in pixel coordinates of each crop. Returns
    ``in1`` (B, size*size) bool, the grid cells of crop 1 inside the overlap, and ``idx2``
    (B, size*size) long, the index of the same cell in crop 2 (meaningful where ``in1``).
    """
    b1, b2 = box1 // stride, box2 // stride
    ii = torch.arange(size, device=box1.device).view(1, size, 1)
    jj = torch.arange(size, device=box1.device).view(1, 1, size)
    y0, x0, y1, x1 = (b1[:, k].view(-1, 1, 1) for k in range(4))
    in1 = (ii >= y0) & (ii < y1) & (jj >= x0) & (jj < x1)
    dy = (b2[:, 0] - b1[:, 0]).view(-1, 1, 1)
    dx = (b2[:, 1] - b1[:, 1]).view(-1, 1, 1)
    idx2 = ((ii + dy).clamp(0, size - 1) * size + (jj + dx).clamp(0, size - 1))
    return in1.flatten(1), idx2.flatten(1)


def overlap_pairs(z1, z2, p1, p2, valid1, valid2, box1, box2, stride):
    """Features (n, D) and pseudo-label logits (n, K) of the overlap pixels, from both crops.

    ``z*`` (B, D, h, w) embeddings and ``p*`` (B, K, h, w) logits, already unflipped; ``valid*``
    (B, h, w) bool cells free of padding. A pixel pairs only if it is valid in both crops.
    """
    b, d, h, w = z1.shape
    in1, idx2 = align_overlap(box1, box2, h, stride)

    def flat(t):
        return t.flatten(2).transpose(1, 2)  # (B, h*w, C)

    def at2(t):  # crop-2 values at the cells matching crop 1's grid
        return t.gather(1, idx2.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

    keep = in1 & valid1.flatten(1) & at2(valid2.flatten(1).unsqueeze(-1)).squeeze(-1)
    return (flat(z1)[keep], at2(flat(z2))[keep], flat(p1)[keep], at2(flat(p2))[keep])


def cac_sizes(cfg, world_size: int, per_u: int) -> dict:
    """Feature map, negatives and expected overlap pixels per step of a CAC config (``--dry-run``).
    The expected overlap assumes a square image of the mean rescaled size (base_size or crop x mean
    scale), with the crop sampler's own distribution of offsets."""
    c, d = cfg.cac, cfg.data
    feat = d.crop_size // 8
    scale = c.scale_range or d.scale_range
    side = max(d.crop_size, int((d.base_size or d.crop_size) * (scale[0] + scale[1]) / 2))
    dy, dx, iou, weight = pair_offsets(side, side, d.crop_size, c.iou_bound, c.stride)
    cells = (d.crop_size - np.abs(dy)) * (d.crop_size - np.abs(dx)) / 64.0
    total = weight.sum()
    available = per_u * feat * feat
    per_rank = min(max(1, c.selected_num // world_size), available)
    fresh = 2 * per_rank * world_size
    return {"cac_feature_map": [feat, feat], "cac_pixels_per_crop_per_process": available,
            "cac_negatives_per_crop_per_process": per_rank,
            "cac_negatives_per_loss": fresh * (1 + c.step_save),
            "cac_expected_overlap_pixels_per_process": round(per_u * float((weight * cells).sum() / total), 1)
            if total > 0 else 0.0,
            "cac_expected_mean_iou": round(float((weight * iou).sum() / total), 3) if total > 0 else None,
            "cac_gathered_floats_per_step": fresh * cfg.model.proj_dim}


class CAC(SemiSupervised):
    name = "cac"
    config_section = {  # Lai et al., CVPR 2021; defaults are the published VOC run
        "iou_bound": field(list, [0.1, 1.0], doc="IoU range of the two unlabeled crops"),
        "stride": field(int, 8, doc="crop offsets are multiples of the feature stride"),
        "scale_range": field(list, None, nullable=True, doc="unlabeled rescale; null: data.scale_range"),
        "selected_num": field(int, 12800, doc="negatives per crop over the global batch; "
                              "each process samples selected_num / world_size"),
        "step_save": field(int, 1, doc="FIFO bank: negatives of this many earlier iterations"),
        "temperature": field(NUM, 0.1),
        "pos_thresh": field(NUM, 0.75),
        "weight_unsup": field(NUM, 0.1),
        **warmup_fields(),
        "chunk": field(int, 8192, doc="negatives per chunk in the loss (memory: anchors x chunk)"),
        "hflip": field(bool, True),
        "color_jitter": field(NUM, 0.8, doc="probability per crop"),
        "grayscale": field(NUM, 0.2),
        "blur": field(NUM, 0.5),
    }
    find_unused_parameters = True  # the projector sits idle during the labeled-only warm-up
    smoke_thresholds = ("pos_thresh",)  # no positive pair is above 0.75 after a few iterations

    @classmethod
    def dry_run_sizes(cls, cfg, world_size: int, unlabeled_per_process: int) -> dict:
        return cac_sizes(cfg, world_size, unlabeled_per_process)

    def __init__(self, cfg, world_size: int = 1):
        super().__init__(cfg, world_size)
        c = self.c
        if cfg.model.arch == "pspnet" and cfg.model.output_stride != 8:
            raise ConfigError("cac with pspnet needs model.output_stride=8 (features at stride 8)")
        if c.stride != 8:
            raise ConfigError(f"cac.stride = {c.stride}: the features are at stride 8")
        if cfg.data.crop_size % 8:
            # the stride-8 cells cover the crop's whole 8-pixel blocks from its top-left corner; a
            # flipped crop's blocks start at its other edge, so its unflipped cells sit crop mod 8
            # pixels off the other crop's (the release trains at 320 and 720, where they coincide)
            off = cfg.data.crop_size % 8
            LOG.warning("cac at data.crop_size %d (not a multiple of 8): the last %d pixel(s) of each side "
                        "have no feature cell, and the cells of a flipped crop sit %d pixel(s) off those of "
                        "an unflipped one", cfg.data.crop_size, off, off)
        self.bank = collections.deque(maxlen=c.step_save) if c.step_save > 0 else None
        self._warned = False

    def build_model(self):
        # from the same random stream as the baseline's: the projector is created last, so encoder,
        # decoder and classifier start from the baseline's weights at the same seed
        return build_segmentor(self.cfg.model, self.cfg.data.num_classes, projector=True)

    def unlabeled_pipeline(self, d):
        c = self.c
        if c.scale_range is not None:
            d = type(d)({**d, "scale_range": c.scale_range})
        return CropPairPipeline(d, c.iou_bound, c.stride, c.hflip, c.color_jitter, c.grayscale, c.blur)

    def weight(self, iteration: int) -> float:
        """The unsupervised term's weight: weight_unsup after the warm-up and ramp."""
        return self.c.weight_unsup * self.ramp(iteration)

    def sample_negatives(self, z, valid, probs):
        """``selected_num / world`` valid pixels without replacement from one crop's whole map."""
        per_rank = max(1, self.c.selected_num // self.world_size)
        feats = z.flatten(2).transpose(1, 2)[valid.flatten(1)]
        labels = probs.argmax(1).flatten()[valid.flatten()]
        if feats.shape[0] < per_rank and not self._warned:
            LOG.warning("cac.selected_num asks %d negatives per crop per process but only %d valid "
                        "pixels are available; using all of them", per_rank, feats.shape[0])
            self._warned = True
        pick = torch.randperm(feats.shape[0], device=z.device)[:per_rank]
        return feats[pick].detach(), labels[pick]

    def training_step(self, model, labeled: dict, unlabeled: dict | None, iteration: int) -> dict:
        weight = self.weight(iteration)
        if weight == 0.0:  # labeled-only warm-up
            return self.warm_up(model, labeled)
        nl, nu = labeled["image"].shape[0], unlabeled["image1"].shape[0]
        # the release runs the labeled batch and each crop batch through the network apart
        # (BatchNorm statistics per batch); train.joint_forward shares them instead
        images = torch.cat([labeled["image"], unlabeled["image1"], unlabeled["image2"]])
        out = logits_and_projection(model, images,
                                    groups=None if self.cfg.train.joint_forward else [nl, nu, nu])
        sup = self.supervised_loss(out["logits"][:nl], labeled["label"])
        z, p = out["proj"][nl:], out["pseudo_logits"][nl:].float()
        u = unlabeled
        flips = (u["flip1"], u["flip2"])
        z1, z2 = (unflip(t, f) for t, f in zip((z[:nu], z[nu:]), flips, strict=True))
        p1, p2 = (unflip(t, f) for t, f in zip((p[:nu], p[nu:]), flips, strict=True))
        # a feature cell is valid when none of its pixels is padding
        v1, v2 = (unflip(-F.max_pool2d(-u[k].float()[:, None], 8)[:, 0], f) > 0.5
                  for k, f in (("valid1", flips[0]), ("valid2", flips[1])))
        f1, f2, q1, q2 = overlap_pairs(z1, z2, p1, p2, v1, v2, u["box1"], u["box2"], self.c.stride)
        conf1, label1 = q1.softmax(1).max(1)
        conf2, label2 = q2.softmax(1).max(1)
        # negatives: this process's sample from both crops, gathered from all processes, plus the bank
        n1, l1 = self.sample_negatives(z1, v1, p1)
        n2, l2 = self.sample_negatives(z2, v2, p2)
        neg = all_gather_rows(torch.cat([n1, n2]))
        neg_label = all_gather_rows(torch.cat([l1, l2]))
        if self.bank is not None:
            fresh = (neg, neg_label)
            if self.bank:
                neg = torch.cat([neg] + [b[0].to(neg.device) for b in self.bank])
                neg_label = torch.cat([neg_label] + [b[1].to(neg.device) for b in self.bank])
            self.bank.append(fresh)
        unsup = directional_contrastive_loss(f1, f2, conf1, conf2, label1, label2, neg, neg_label,
                                             self.c.temperature, self.c.pos_thresh, self.c.chunk)
        with torch.no_grad():
            t = self.c.pos_thresh
            d1 = (conf2 > t) & (conf1 < conf2)
            d2 = (conf1 > t) & (conf2 < conf1)
            counts = torch.bincount(neg_label, minlength=self.cfg.data.num_classes)
            unmasked = torch.cat([neg.shape[0] - counts[label1[d1]], neg.shape[0] - counts[label2[d2]]])
        out = {"loss": sup + weight * unsup, "sup": sup.detach(), "unsup": unsup.detach(),
               "pos_pairs_1": float(d1.sum()), "pos_pairs_2": float(d2.sum()),
               "neg_pairs": float(unmasked.sum()), "neg_per_pos": float(unmasked.float().mean())
               if unmasked.numel() else 0.0, "overlap_px": float(f1.shape[0]),
               "crop_iou": float(u["iou"].mean())}
        if "label1" in u:  # hidden truth (benchmarks): the pseudo labels of both crops' feature cells
            s = self.c.stride  # each cell against the true label at its centre pixel
            truth = torch.cat([unflip(u[k], f)[:, s // 2::s, s // 2::s] for k, f in (("label1", flips[0]),
                                                                                     ("label2", flips[1]))])
            conf, pred = torch.cat([p1, p2]).softmax(1).max(1)
            out.update(pseudo_label_accuracy(pred, truth, torch.cat([v1, v2]), conf > self.c.pos_thresh,
                                             self.ignore_index, self.background))
        return out

    def state_dict(self) -> dict:
        bank = [(feats.cpu(), labels.cpu()) for feats, labels in self.bank] if self.bank is not None else []
        return {**super().state_dict(), "bank": bank}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.bank is not None:
            self.bank.clear()
            for feats, labels in state.get("bank", []):
                self.bank.append((feats, labels))
