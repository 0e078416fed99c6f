"""CPS: Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision (Chen et al., CVPR 2021).

Two Segmentors of one architecture, initialised differently, each supervise the other with its
hard pseudo labels (argmax, no gradient):

    loss = CE(f1(x_l), y) + CE(f2(x_l), y) + lambda x [CE(f1(x), argmax f2(x)) + CE(f2(x), argmax f1(x))]

Without CutMix the cross term covers labeled and unlabeled images. With CutMix it covers mixed
unlabeled images: two *different* unlabeled images are mixed with box masks, and the targets are the
predictions on the two unmixed images mixed with the same mask. Padded pixels never get a pseudo
label. Losses are per-process means; DDP averages gradients, nothing is divided again.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from seg_ssl.collectives import all_reduce_sum
from seg_ssl.data.cutmix import box_masks, mix
from seg_ssl.losses.pseudo_labels import pseudo_label_accuracy, pseudo_label_stats, pseudo_labels
from seg_ssl.methods.base import FG_MARGINAL, SemiSupervised, warmup_fields
from seg_ssl.models.segmentor import build_segmentor, cat_outputs
from seg_ssl.schema import NUM, field


class TwoBranch(nn.Module):
    """Both networks in one module, so one DDP wrapper and one forward serve a step."""

    def __init__(self, branch1: nn.Module, branch2: nn.Module):
        super().__init__()
        self.branch1, self.branch2 = branch1, branch2

    @property
    def size_divisor(self) -> int:
        return self.branch1.size_divisor

    def forward(self, x: torch.Tensor, groups: list[int] | None = None):
        """Both branches' logits; ``groups`` runs each group of the batch on its own (BatchNorm
        statistics per group), inside this one call that DDP sees."""
        if groups is None:
            return self.branch1(x), self.branch2(x)
        parts = x.split(list(groups))
        return tuple(cat_outputs([branch(p) for p in parts]) for branch in (self.branch1, self.branch2))


def cross_pseudo_loss(student1, student2, teacher1=None, teacher2=None, valid=None,
                      ignore_index: int = 255, conf_thresh: float = 0.0, align=None,
                      fg_marginal: bool = False, return_targets: bool = False):
    """CE(student1, pseudo labels of teacher2) + CE(student2, pseudo labels of teacher1).

    Plain CPS: each branch's own logits are the other's teacher (``teacher* = None``). CutMix: the
    teachers are the mixed predictions on the unmixed images. The other arguments are those of
    :func:`pseudo_labels`. ``return_targets`` also returns both branches' pseudo labels.
    """
    def ce(logits, target):  # a batch whose every pixel is ignored contributes 0, not NaN
        if not (target != ignore_index).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, ignore_index=ignore_index)

    kw = dict(valid=valid, ignore_index=ignore_index, conf_thresh=conf_thresh, align=align,
              fg_marginal=fg_marginal)
    t1 = pseudo_labels(student1 if teacher1 is None else teacher1, **kw)
    t2 = pseudo_labels(student2 if teacher2 is None else teacher2, **kw)
    loss = ce(student1, t2) + ce(student2, t1)
    return (loss, t1, t2) if return_targets else loss


class CPS(SemiSupervised):
    name = "cps"
    config_section = {  # Chen et al., CVPR 2021; defaults are the published VOC run with CutMix
        "weight": field(NUM, 1.0, doc="lambda: VOC 1.5 (1.0 with CutMix), Cityscapes 6 (5 with CutMix)"),
        "cutmix": field(bool, True),
        "mask_prop_range": field(list, [0.25, 0.5],
                                 doc="CutMix: each box covers U(range) / mask_boxes of the image"),
        "mask_boxes": field(int, 3),
        "mask_invert": field(bool, True, doc="the release's flag: boxes are 1 (taken from the second image)"),
        **warmup_fields(),
        "conf_thresh": field(NUM, 0.0, doc="ignore pseudo labels below this confidence (0: the paper)"),
        "dist_align": field(bool, False, doc="align pseudo-label class frequencies with the labeled ones "
                            "(not in the paper; counters collapse to background)"),
        "dist_align_momentum": field(NUM, 0.99),
        "fg_marginal": FG_MARGINAL,
        "eval_branch": field(str, "1", choices=["1", "2", "ensemble"], doc="which branch evaluation scores"),
    }
    loss_scale_note = ("loss = sup1 + sup2 (two networks, each with its own cross-entropy): twice a "
                       "labeled-only loss; compare sup1 or sup2 with labeled-only's loss")

    def __init__(self, cfg, world_size: int = 1):
        super().__init__(cfg, world_size)
        # distribution alignment: running class frequencies of labels and of pseudo-label predictions
        k = cfg.data.num_classes
        self.label_dist = torch.full((k,), 1.0 / k)
        self.pred_dist = torch.full((k,), 1.0 / k)

    def build_model(self):
        # same pretrained encoder weights where given (loaded from the same file); everything
        # randomly initialised is drawn from different seeds. fork_rng leaves the caller's
        # (per-process) random stream as it was.
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            b1 = build_segmentor(cfg.model, cfg.data.num_classes)
            torch.manual_seed(cfg.seed + 1)
            b2 = build_segmentor(cfg.model, cfg.data.num_classes)
        return TwoBranch(b1, b2)

    @classmethod
    def unlabeled_draws(cls, cfg) -> int:
        """CutMix mixes two different unlabeled images per output image."""
        return 2 if cfg.cps.cutmix else 1

    def weight(self, iteration: int) -> float:
        """lambda after the labeled-only warm-up and ramp."""
        return self.c.weight * self.ramp(iteration)

    def alignment(self, labels: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor):
        """Update the running label / prediction class frequencies (averaged over processes) and
        return their ratio, which pulls the pseudo-label distribution towards the labeled one
        (ReMixMatch's distribution alignment); None when ``cps.dist_align`` is off."""
        if not self.c.dist_align:
            return None
        k = self.cfg.data.num_classes
        with torch.no_grad():
            lab = labels[labels != self.ignore_index]
            freq = torch.bincount(lab, minlength=k)[:k].float()
            prob = teacher_logits.float().softmax(1).permute(0, 2, 3, 1)[valid].sum(0)
            stats = all_reduce_sum(torch.cat([freq, prob]))
            m = self.c.dist_align_momentum
            dev = stats.device
            self.label_dist = (self.label_dist.to(dev) * m
                               + (1 - m) * stats[:k] / stats[:k].sum().clamp_min(1))
            self.pred_dist = (self.pred_dist.to(dev) * m
                              + (1 - m) * stats[k:] / stats[k:].sum().clamp_min(1e-6))
            return self.label_dist / self.pred_dist.clamp_min(1e-6)

    def training_step(self, model, labeled: dict, unlabeled: dict | None, iteration: int) -> dict:
        x_l, y = labeled["image"], labeled["label"]
        nl = x_l.shape[0]
        lam = self.weight(iteration)
        if lam == 0.0:  # labeled-only warm-up
            l1, l2 = model(x_l)
            sup1, sup2 = self.supervised_loss(l1, y), self.supervised_loss(l2, y)
            return {"loss": sup1 + sup2, "sup1": sup1, "sup2": sup2}
        x_u, valid_u = unlabeled["image"], unlabeled["valid"]
        if self.c.cutmix:
            half = x_u.shape[0] // 2
            u0, u1, v0, v1 = x_u[:half], x_u[half:], valid_u[:half], valid_u[half:]
            masks, _ = box_masks(half, u0.shape[-2], u0.shape[-1], self.c.mask_prop_range, self.c.mask_boxes,
                                 self.c.mask_invert, self.mask_rng)
            masks = masks.to(u0.device)
            with torch.no_grad():  # targets from the unmixed images, mixed with the same mask
                t1, t2 = model(torch.cat([u0, u1]), groups=self.groups(half, half))
                t1 = mix(t1[:half], t1[half:], masks)
                t2 = mix(t2[:half], t2[half:], masks)
            x_mix = mix(u0, u1, masks)
            valid = mix(v0.float(), v1.float(), masks) > 0.5
            align = self.alignment(y, torch.cat([t1, t2]), torch.cat([valid, valid]))
            l1, l2 = model(torch.cat([x_l, x_mix]), groups=self.groups(nl, half))
            sup1, sup2 = self.supervised_loss(l1[:nl], y), self.supervised_loss(l2[:nl], y)
            # cross supervision on the mixed images: each branch learns the other's mixed targets
            cps, p1, p2 = cross_pseudo_loss(l1[nl:], l2[nl:], t1, t2, valid, self.ignore_index,
                                            self.c.conf_thresh, align, self.c.fg_marginal,
                                            return_targets=True)
            truth = (torch.where(masks > 0.5, unlabeled["label"][half:], unlabeled["label"][:half])
                     if "label" in unlabeled else None)
        else:
            l1, l2 = model(torch.cat([x_l, x_u]), groups=self.groups(nl, x_u.shape[0]))
            sup1, sup2 = self.supervised_loss(l1[:nl], y), self.supervised_loss(l2[:nl], y)
            # pseudo labels everywhere but padding: on labeled images too, their 255 pixels (object
            # borders) included, as the release does
            valid = torch.cat([labeled["valid"], valid_u])
            align = self.alignment(y, torch.cat([l1[nl:], l2[nl:]]).detach(), torch.cat([valid_u, valid_u]))
            cps, p1, p2 = cross_pseudo_loss(l1, l2, valid=valid, ignore_index=self.ignore_index,
                                            conf_thresh=self.c.conf_thresh, align=align,
                                            fg_marginal=self.c.fg_marginal, return_targets=True)
            p1, p2, valid = p1[nl:], p2[nl:], valid_u  # report the unlabeled images only
            truth = unlabeled.get("label")
        out = {"loss": sup1 + sup2 + lam * cps, "sup1": sup1, "sup2": sup2, "cps": cps.detach(),
               **pseudo_label_stats(torch.cat([p1, p2]), torch.cat([valid, valid]), self.cfg.data.num_classes,
                                    self.ignore_index, self.background)}
        if align is not None:
            out["pred_bg_ema"] = float(self.pred_dist[0])
        if truth is not None:  # hidden truth of the unlabeled images (benchmarks); both branches' labels
            p = torch.cat([p1, p2])  # pixels cps.conf_thresh drops count as wrong in pl_acc
            out.update(pseudo_label_accuracy(p, torch.cat([truth, truth]), torch.cat([valid, valid]),
                                             p != self.ignore_index, self.ignore_index, self.background))
        return out

    def predictor(self, model):
        branch = self.c.eval_branch
        if branch == "1":
            return model.branch1
        if branch == "2":
            return model.branch2

        def ensemble(x):  # log of the mean probability: its softmax is the averaged probability
            p = (model.branch1(x).float().softmax(1) + model.branch2(x).float().softmax(1)) / 2
            return torch.log(p.clamp_min(1e-12))
        return ensemble

    def network(self, model):
        return model.branch2 if self.c.eval_branch == "2" else model.branch1

    def state_dict(self) -> dict:
        return {**super().state_dict(), "label_dist": self.label_dist.cpu(),
                "pred_dist": self.pred_dist.cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for key in ("label_dist", "pred_dist"):
            if key in state:
                setattr(self, key, state[key].clone())
