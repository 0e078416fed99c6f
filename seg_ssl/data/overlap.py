"""Two overlapping crops with a bounded IoU (CAC), and the unlabeled crop-pair pipeline.

The offsets between the two windows are multiples of ``stride`` so that the shared region maps
exactly onto the stride-8 feature grid of both crops.
"""
from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch

from seg_ssl.data.transforms import IGNORE, normalize, photometric_ops, rescale_pad_ops


@dataclass(frozen=True)
class CropPair:
    top1: int
    left1: int
    top2: int
    left2: int
    box1: tuple  # shared region in crop 1's coordinates: (y0, x0, y1, x1)
    box2: tuple  # the same region in crop 2's coordinates
    iou: float


def pair_iou(dy, dx, crop_size):
    """IoU of two crop_size squares offset by (dy, dx) (arrays welcome)."""
    inter = np.clip(crop_size - np.abs(dy), 0, None) * np.clip(crop_size - np.abs(dx), 0, None)
    return inter / (2.0 * crop_size * crop_size - inter)


def pair_offsets(height: int, width: int, crop_size: int, iou_bound, stride: int = 8):
    """Every offset ``(dy, dx)`` on the stride grid between two ``crop_size`` windows that both fit
    in ``height x width`` and overlap, as 2-D arrays, with their IoU and the probability weight of
    drawing each (the number of placements of the first window, 0 where the IoU is out of bounds):
    drawing an offset by weight, then a placement, draws a uniform pair."""
    lo, hi = float(iou_bound[0]), float(iou_bound[1])
    max_dy, max_dx = min(height - crop_size, crop_size - 1), min(width - crop_size, crop_size - 1)
    dys = np.arange(-(max_dy // stride), max_dy // stride + 1) * stride
    dxs = np.arange(-(max_dx // stride), max_dx // stride + 1) * stride
    dy, dx = np.meshgrid(dys, dxs, indexing="ij")
    iou = pair_iou(dy, dx, crop_size)
    ok = (iou >= lo - 1e-12) & (iou <= hi + 1e-12)
    weight = (height - crop_size - np.abs(dy) + 1) * (width - crop_size - np.abs(dx) + 1) * ok
    return dy, dx, iou, weight


def sample_overlapping_crops(height: int, width: int, crop_size: int, iou_bound, stride: int = 8,
                             rng: np.random.Generator | None = None) -> CropPair:
    """Draw uniformly from every pair of ``crop_size`` windows inside ``height x width`` whose
    offsets are multiples of ``stride`` and whose IoU lies in ``[iou_bound[0], iou_bound[1]]``.

    Raises ``ValueError`` naming the bound when no such pair exists (never falls back to identical
    crops).
    """
    rng = rng if rng is not None else np.random.default_rng()
    lo, hi = float(iou_bound[0]), float(iou_bound[1])
    if height < crop_size or width < crop_size:
        raise ValueError(f"image {height}x{width} is smaller than crop_size {crop_size}; pad it first")
    dy, dx, iou, weight = pair_offsets(height, width, crop_size, iou_bound, stride)
    total = weight.sum()
    if total <= 0:
        raise ValueError(f"iou_bound {[lo, hi]} cannot be met by two {crop_size}px crops of a "
                         f"{height}x{width} image on a stride-{stride} grid (feasible IoU: "
                         f"{pair_iou(dy, dx, crop_size).min():.3f}..1)")
    k = int(rng.choice(weight.size, p=(weight / total).ravel()))
    oy, ox = int(dy.ravel()[k]), int(dx.ravel()[k])
    top1 = int(rng.integers(max(0, -oy), height - crop_size - max(0, oy) + 1))
    left1 = int(rng.integers(max(0, -ox), width - crop_size - max(0, ox) + 1))
    top2, left2 = top1 + oy, left1 + ox
    y0, x0 = max(0, oy), max(0, ox)
    y1, x1 = crop_size + min(0, oy), crop_size + min(0, ox)
    box1 = (y0, x0, y1, x1)
    box2 = (y0 - oy, x0 - ox, y1 - oy, x1 - ox)
    return CropPair(top1, left1, top2, left2, box1, box2, float(iou.ravel()[k]))


class CropPairPipeline:
    """Unlabeled pipeline of CAC: shared rescale, pad, sample the pair, then per crop an independent
    flip and photometric augmentation. Returns both crops, their validity masks (False on padding),
    flip flags and the shared boxes; the method undoes flips on features before aligning."""

    def __init__(self, d, iou_bound, stride: int = 8, hflip: bool = True, color_jitter: float = 0.8,
                 grayscale: float = 0.2, blur: float = 0.5):
        self.d, self.iou_bound, self.stride, self.hflip = d, iou_bound, stride, hflip
        ops = rescale_pad_ops(d, d.crop_size)
        self.geometry = A.Compose(ops)
        photo = photometric_ops(color_jitter, grayscale, blur)
        self.photometric = A.Compose(photo) if photo else None

    # label is None unless a benchmark loads the hidden truth (data.unlabeled_truth): then each crop
    # also returns its ``label1`` / ``label2``, for pseudo-label accuracy in the log
    def __call__(self, image: np.ndarray, label, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        self.geometry.set_random_seed(int(rng.integers(2**31)))
        pad = np.zeros(image.shape[:2], np.uint8)
        out = self.geometry(image=image, masks=[pad] if label is None else [pad, label])
        img, valid = out["image"], out["masks"][0] != IGNORE
        truth = None if label is None else out["masks"][1]
        c = self.d.crop_size
        pair = sample_overlapping_crops(img.shape[0], img.shape[1], c, self.iou_bound, self.stride, rng)
        result = {"iou": torch.tensor(pair.iou, dtype=torch.float32)}
        for i, (t, l, box) in enumerate(((pair.top1, pair.left1, pair.box1),
                                         (pair.top2, pair.left2, pair.box2)), 1):
            crop, v = img[t:t + c, l:l + c], valid[t:t + c, l:l + c]
            y = None if truth is None else truth[t:t + c, l:l + c]
            flip = bool(self.hflip and rng.random() < 0.5)
            if flip:
                crop, v = crop[:, ::-1], v[:, ::-1]
                y = None if y is None else y[:, ::-1]
            if y is not None:
                result[f"label{i}"] = torch.from_numpy(np.ascontiguousarray(y)).long()
            if self.photometric is not None:
                self.photometric.set_random_seed(int(rng.integers(2**31)))
                crop = self.photometric(image=np.ascontiguousarray(crop))["image"]
            result[f"image{i}"] = normalize(crop, self.d.mean, self.d.std)
            result[f"valid{i}"] = torch.from_numpy(np.ascontiguousarray(v))
            result[f"flip{i}"] = torch.tensor(flip)
            result[f"box{i}"] = torch.tensor(box, dtype=torch.long)
        return result
