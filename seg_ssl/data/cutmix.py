"""CutMix box masks as in the CPS release (French et al.'s box mask generator, "prop by area",
random aspect, boxes inside the image), and mixing.

Each of ``n_boxes`` boxes draws its own proportion ``p ~ U(prop_range)``; its sides are
``h = exp(u ln p)`` and ``w = p / h`` (u ~ U(0, 1), so ``h * w = p``), both scaled by
``sqrt(1 / n_boxes)``: a box covers ``p / n_boxes`` of the image and no side exceeds
``sqrt(1 / n_boxes)`` of it. Boxes toggle the mask where they overlap. ``invert`` (the release's
flag, on in CPS) starts from a mask of 0, so the boxes are 1: the pixels taken from the second image.
"""
from __future__ import annotations

import numpy as np
import torch


def box_masks(n: int, height: int, width: int, prop_range=(0.25, 0.5), n_boxes: int = 3,
              invert: bool = True, rng: np.random.Generator | None = None):
    """Masks (n, height, width) float32 in {0, 1} and each mask's drawn box area as a fraction of
    the image (n,), before overlaps cancel."""
    rng = rng if rng is not None else np.random.default_rng()
    props = rng.uniform(prop_range[0], prop_range[1], size=(n, n_boxes))
    ys = np.exp(rng.uniform(0.0, 1.0, size=(n, n_boxes)) * np.log(props))
    xs = props / ys
    scale = np.sqrt(1.0 / n_boxes)
    shape = np.array([height, width])
    sizes = np.round(np.stack([ys * scale, xs * scale], axis=2) * shape)  # (n, boxes, 2)
    starts = np.round((shape - sizes) * rng.uniform(0.0, 1.0, size=sizes.shape)).astype(int)
    ends = starts + sizes.astype(int)
    masks = np.zeros((n, height, width), np.float32) if invert else np.ones((n, height, width), np.float32)
    for i in range(n):
        for (y0, x0), (y1, x1) in zip(starts[i], ends[i]):
            masks[i, y0:y1, x0:x1] = 1.0 - masks[i, y0:y1, x0:x1]
    return torch.from_numpy(masks), torch.from_numpy((props / n_boxes).sum(1).astype(np.float32))


def mix(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``a`` where mask is 0, ``b`` where it is 1; mask (B, H, W) broadcast over channels."""
    m = mask.to(a.dtype)
    while m.dim() < a.dim():
        m = m.unsqueeze(1)
    return a * (1 - m) + b * m


def single_box_masks(n: int, height: int, width: int, p: float = 0.5, size_range=(0.02, 0.4),
                     ratio_range=(0.3, 1 / 0.3), rng: np.random.Generator | None = None) -> torch.Tensor:
    """UniMatch's CutMix boxes (n, height, width) float32 in {0, 1}: with probability ``p`` one box
    of ``U(size_range)`` of the image area and aspect ``h / w ~ U(ratio_range)``, its top-left corner
    drawn uniformly and redrawn (with the aspect) until the box fits; else no box (all 0)."""
    rng = rng if rng is not None else np.random.default_rng()
    masks = np.zeros((n, height, width), np.float32)
    for i in range(n):  # a handful of images per step; the loop is over images, not pixels
        if rng.uniform() > p:
            continue
        area = rng.uniform(*size_range) * height * width
        while True:
            ratio = rng.uniform(*ratio_range)
            w, h = int(np.sqrt(area / ratio)), int(np.sqrt(area * ratio))
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            if x + w <= width and y + h <= height:
                break
        masks[i, y:y + h, x:x + w] = 1.0
    return torch.from_numpy(masks)


def halves(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A CutMix method's unlabeled batch: the images, and (the second half) those their boxes come from."""
    n = batch.shape[0] // 2
    return batch[:n], batch[n:]
