"""The embedded default dataset: handwritten digits on textured canvases, in the VOC layout.

Built offline from scikit-learn's bundled 8x8 digits (1,797 images, no download). Each canvas holds
1-3 upscaled digits in random colours on a tinted, two-scale noise background with colour jitter and
pixel noise. Class ``1 + digit`` where the upscaled stroke is above half its peak, 255 (ignore) on
the anti-aliased band between 0.15 and 0.3, background 0. Train canvases use source digits
0-1399 and val canvases 1400-1796, so val measures generalisation to unseen handwriting.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

CLASS_NAMES = ["background"] + [f"digit_{d}" for d in range(10)]
NUM_CLASSES = 11
TRAIN_SOURCES = (0, 1400)
VAL_SOURCES = (1400, 1797)


def _smooth_noise(rng, size: int, cell: int) -> np.ndarray:
    """Value noise: a coarse random grid upsampled bicubically, in [-1, 1]."""
    g = max(2, size // cell + 2)
    coarse = rng.uniform(-1, 1, (g, g)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _digit_mask(src8: np.ndarray, size: int) -> np.ndarray:
    """Upscale an 8x8 digit (0..16) to size x size intensity in [0, 1], zero border kept soft."""
    padded = np.pad(src8.astype(np.float32) / 16.0, 1)
    up = cv2.resize(padded, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(up, 0.0, 1.0)


def _count_probs(max_digits: int) -> np.ndarray:
    w = np.arange(1, max_digits + 1, dtype=np.float64)
    return w / w.sum()


def _overlap(top: int, left: int, size: int, box: tuple) -> float:
    """Fraction of the new box covered by an earlier one."""
    t, l, s = box
    h = max(0, min(top + size, t + s) - max(top, t))
    w = max(0, min(left + size, l + s) - max(left, l))
    return h * w / float(size * size)


def render_canvas(rng: np.random.Generator, images: np.ndarray, targets: np.ndarray,
                  source_range: tuple[int, int], canvas: int = 64, max_digits: int = 3,
                  size_range: tuple[int, int] = (44, 60), max_overlap: float = 0.25,
                  noise: float = 0.08
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One image (HxWx3 uint8) and its label (HxW uint8)."""
    tint = rng.uniform(0.15, 0.85, 3)
    bg = (tint[None, None, :]
          + 0.18 * _smooth_noise(rng, canvas, 16)[..., None] * rng.uniform(0.5, 1.5, 3)
          + 0.08 * _smooth_noise(rng, canvas, 4)[..., None] * rng.uniform(0.5, 1.5, 3))
    img = bg.astype(np.float32)
    label = np.zeros((canvas, canvas), np.uint8)
    # more canvases with several digits, so background stays near 60% of the pixels
    n = int(rng.choice(np.arange(1, max_digits + 1), p=_count_probs(max_digits)))
    boxes: list = []
    for _ in range(n):
        k = int(rng.integers(*source_range))
        size = int(rng.integers(size_range[0], size_range[1] + 1))
        inten = _digit_mask(images[k], size)
        # a few tries to keep each new digit mostly clear of the earlier ones
        for _try in range(20):
            top = int(rng.integers(-size // 8, canvas - size + size // 8 + 1))
            left = int(rng.integers(-size // 8, canvas - size + size // 8 + 1))
            if all(_overlap(top, left, size, b) <= max_overlap for b in boxes):
                break
        boxes.append((top, left, size))
        # clip the digit's box to the canvas
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + size, canvas), min(left + size, canvas)
        patch = inten[y0 - top:y1 - top, x0 - left:x1 - left]
        colour = rng.uniform(0, 1, 3)
        while np.abs(colour - tint).sum() < 0.6:  # keep digits visible against the tint
            colour = rng.uniform(0, 1, 3)
        alpha = np.clip(patch * 2.5, 0, 1)[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + colour * alpha
        region = label[y0:y1, x0:x1]
        region[patch > 0.3] = 1 + int(targets[k])
        region[(patch > 0.15) & (patch <= 0.3)] = 255
    # global colour jitter and pixel noise
    img = (img - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.1, 0.1)
    img = img * rng.uniform(0.85, 1.15, 3)
    img = img + rng.normal(0, noise, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), label


# Named renderings. "clean": larger gaps between fewer, non-overlapping digits and less pixel noise:
# a pretrained encoder then learns the task from its labels within a CPU budget, and the number of
# labels, not compute, limits the labeled-only model (the pretrained-encoder benchmark).
RENDERINGS = {
    "default": {},
    "clean": {"size_range": (30, 42), "max_digits": 2, "max_overlap": 0.0, "noise": 0.03},
}
# each rendering's labeled splits: the clean one is the pretrained benchmark's, whose label counts are
# 1/16 (188) and 250, with 94 (1/32), 125 and 375 (1/8) beside them (benchmarks/README.md)
DEFAULT_SPLITS = {"default": ("1/16", "1/8"), "clean": ("1/32", "125", "1/16", "250", "1/8")}


def built_stamp(num_train: int, num_val: int, seed: int, rendering: str) -> str:
    """What a built set's ``.complete`` marker holds: a set is reused only if its stamp matches."""
    return f"{num_train} {num_val} {seed}" + ("" if rendering == "default" else f" {rendering}")


def build_digits(out_dir: str, num_train: int = 3000, num_val: int = 500, seed: int = 0,
                 canvas: int = 64, splits=("1/16", "1/8"), **render) -> dict:
    """Write the dataset in the VOC layout and nested labeled splits (fractions like '1/16' or fixed
    counts like '250', all prefixes of one permutation); returns the image counts."""
    from sklearn.datasets import load_digits

    from seg_ssl.data.splits import nested_splits, write_split

    digits = load_digits()
    images, targets = digits.images, digits.target
    img_dir = os.path.join(out_dir, "JPEGImages")
    ann_dir = os.path.join(out_dir, "SegmentationClass")
    list_dir = os.path.join(out_dir, "ImageSets", "Segmentation")
    for d in (img_dir, ann_dir, list_dir):
        os.makedirs(d, exist_ok=True)
    ids = {"train": [], "val": []}
    for split, count, sources, stream in (("train", num_train, TRAIN_SOURCES, 0),
                                          ("val", num_val, VAL_SOURCES, 1)):
        for i in range(count):
            rng = np.random.default_rng([seed, stream, i])
            image, label = render_canvas(rng, images, targets, sources, canvas, **render)
            sid = f"{split}_{i:05d}"
            Image.fromarray(image).save(os.path.join(img_dir, sid + ".jpg"), quality=95)
            Image.fromarray(label, mode="L").save(os.path.join(ann_dir, sid + ".png"))
            ids[split].append(sid)
        with open(os.path.join(list_dir, f"{split}.txt"), "w") as f:
            f.write("\n".join(ids[split]) + "\n")
    lists = nested_splits(ids["train"], list(splits), seed=seed)
    for name, (labeled, unlabeled) in lists.items():
        write_split(os.path.join(out_dir, "splits", name), labeled, unlabeled)
    return {"train": len(ids["train"]), "val": len(ids["val"]),
            **{name: len(lab) for name, (lab, _) in lists.items()}}
