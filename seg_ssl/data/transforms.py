"""Augmentation pipelines built with albumentations, seeded per sample.

Each pipeline is a callable ``(image, label, seed) -> dict`` returning a normalised CHW float
tensor ``image``, a ``valid`` mask (False on padding, so no method ever learns from padded pixels)
and, when a label was given, a long ``label`` (255 on padding and on the dataset's ignored pixels).
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

IGNORE = 255


def normalize(image: np.ndarray, mean, std) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 3xHxW float tensor, (x/255 - mean) / std."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def rescale_pad_ops(d, crop: int) -> list:
    """Random scale (shared by everything after it) and padding to at least the crop
    (image mean / label 255, at the bottom and right)."""
    fill = tuple(float(round(m * 255)) for m in d.mean)
    ops = []
    if d.base_size:
        ops.append(A.LongestMaxSize(max_size=d.base_size, interpolation=cv2.INTER_LINEAR,
                                    mask_interpolation=cv2.INTER_NEAREST))
    lo, hi = d.scale_range
    if (lo, hi) != (1.0, 1.0):
        ops.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                                 mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    ops.append(A.PadIfNeeded(min_height=crop, min_width=crop, position="top_left",
                             border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=IGNORE))
    return ops


def geometric_ops(d, crop_size: int | None = None) -> list:
    """Rescale and pad, random crop, flip and shift, from config."""
    crop = crop_size or d.crop_size
    fill = tuple(float(round(m * 255)) for m in d.mean)
    ops = rescale_pad_ops(d, crop) + [A.RandomCrop(crop, crop)]
    if d.hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if d.shift > 0:
        ops.append(A.Affine(translate_percent=(-d.shift, d.shift), border_mode=cv2.BORDER_CONSTANT,
                            fill=fill, fill_mask=IGNORE, interpolation=cv2.INTER_LINEAR,
                            mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    return ops


def photometric_ops(p_jitter: float, p_gray: float = 0.0, p_blur: float = 0.0,
                    jitter=(0.4, 0.4, 0.4, 0.1), blur_limit=(3, 5)) -> list:
    """Colour jitter (brightness, contrast, saturation, hue), grayscale and Gaussian blur (sigma
    0.1-2), each with its probability; ``blur_limit`` 0 sizes the kernel from sigma, as PIL does."""
    ops = []
    if p_jitter > 0:
        b, c, s, h = jitter
        ops.append(A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=p_jitter))
    if p_gray > 0:
        ops.append(A.ToGray(p=p_gray))
    if p_blur > 0:
        ops.append(A.GaussianBlur(blur_limit=blur_limit, sigma_limit=(0.1, 2.0), p=p_blur))
    return ops


class Pipeline:
    """An albumentations Compose applied with a per-sample seed, then normalised."""

    def __init__(self, ops: list, mean, std, labeled: bool = True):
        self.compose = A.Compose(ops) if ops else None
        self.mean, self.std, self.labeled = mean, std, labeled

    def __call__(self, image: np.ndarray, label: np.ndarray | None, seed: int) -> dict:
        # padding is tracked through the same geometry by a mask of zeros, padded with IGNORE: a
        # labeled image's 255 pixels may be object borders (real pixels), not only padding
        pad = np.zeros(image.shape[:2], np.uint8)
        if self.compose is not None:
            self.compose.set_random_seed(int(seed))
            out = self.compose(image=image, masks=[pad] if label is None else [label, pad])
            image, pad = out["image"], out["masks"][-1]
            label = None if label is None else out["masks"][0]
        result = {"image": normalize(image, self.mean, self.std), "valid": torch.from_numpy(pad != IGNORE)}
        if self.labeled:
            result["label"] = torch.from_numpy(np.ascontiguousarray(label)).long()
        return result


class WeakStrongPipeline:
    """The unlabeled sample of UniMatch (two strong views) and FixMatch (one): a weak view (the
    geometric ops: rescale, crop, flip) and ``views`` strong views of that same crop, each with its
    own draw of the photometric ops, so that a pixel is the same pixel in all of them. Returns
    ``image`` (weak), ``strong`` (one view) or ``strong1``, ``strong2`` ... and ``valid`` (False on padding); with
    ``labeled`` also the ``label`` of the weak crop (a benchmark's hidden truth, for pseudo-label
    accuracy)."""

    def __init__(self, d, strong_ops: list, labeled: bool = False, views: int = 2):
        self.geometric = A.Compose(geometric_ops(d))
        self.strong = A.Compose(strong_ops)
        self.mean, self.std, self.labeled, self.views = d.mean, d.std, labeled, views

    def __call__(self, image: np.ndarray, label: np.ndarray | None, seed: int) -> dict:
        pad = np.zeros(image.shape[:2], np.uint8)
        self.geometric.set_random_seed(int(seed))
        out = self.geometric(image=image, masks=[pad] if label is None else [label, pad])
        weak, pad = out["image"], out["masks"][-1]
        result = {"image": normalize(weak, self.mean, self.std), "valid": torch.from_numpy(pad != IGNORE)}
        for view in range(1, self.views + 1):  # independent, reproducible draws per view
            self.strong.set_random_seed(int(np.random.SeedSequence([int(seed), view]).generate_state(1)[0]))
            name = "strong" if self.views == 1 else f"strong{view}"
            result[name] = normalize(self.strong(image=weak)["image"], self.mean, self.std)
        if self.labeled and label is not None:
            result["label"] = torch.from_numpy(np.ascontiguousarray(out["masks"][0])).long()
        return result


def train_pipeline(d, labeled: bool = True) -> Pipeline:
    return Pipeline(geometric_ops(d) + photometric_ops(d.color_jitter), d.mean, d.std, labeled)


def val_pipeline(d) -> Pipeline:
    """Original resolution, no augmentation: the evaluator pads as its mode needs."""
    return Pipeline([], d.mean, d.std, labeled=True)
