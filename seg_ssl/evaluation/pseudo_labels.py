"""What a semi-supervised method's pseudo labels look like during training (pure functions).

``pseudo_label_stats`` needs no truth: class shares of the kept pseudo labels (a drift towards
background is how CPS collapses) and the share of valid pixels that keep one. ``pseudo_label_accuracy``
scores them against the true labels of the "unlabeled" images, where a benchmark has them
(``data.unlabeled_truth``): a method whose pseudo labels get worse than its warm-up teacher's is the
first thing to look at.
"""
from __future__ import annotations

import torch


def first_class_is_background(class_names) -> bool:
    """Whether class 0 is a background class (VOC, digits), not an object class (Cityscapes' road)."""
    return bool(class_names) and str(class_names[0]).lower() in ("background", "bg", "_background_")


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
