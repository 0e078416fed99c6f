"""CutMix box masks as in CPS (French et al.'s generator): several boxes whose total area is drawn
from ``prop_range``, combined by toggling (overlaps cancel), optionally inverted."""
from __future__ import annotations

import numpy as np
import torch


def box_masks(n: int, height: int, width: int, prop_range=(0.25, 0.5), n_boxes: int = 3,
              invert: bool = True, rng: np.random.Generator | None = None):
    """Masks (n, height, width) float32 in {0, 1} and the drawn proportions (n,).

    Each box has area ``prop / n_boxes`` of the image with a random aspect ratio and lies inside the
    image; 1 marks the pixels taken from the second image."""
    rng = rng if rng is not None else np.random.default_rng()
    props = rng.uniform(prop_range[0], prop_range[1], size=n)
    masks = np.zeros((n, height, width), np.float32)
    for i, prop in enumerate(props):
        area = prop / n_boxes
        for _ in range(n_boxes):
            # aspect: log-uniform so that both sides are fractions in [area, 1]
            ry = np.exp(rng.uniform(np.log(area), 0.0))
            rx = area / ry
            bh, bw = int(round(ry * height)), int(round(rx * width))
            y0 = int(rng.integers(0, height - bh + 1))
            x0 = int(rng.integers(0, width - bw + 1))
            masks[i, y0:y0 + bh, x0:x0 + bw] = 1.0 - masks[i, y0:y0 + bh, x0:x0 + bw]
    if invert:
        masks = 1.0 - masks
    return torch.from_numpy(masks), torch.from_numpy(props.astype(np.float32))


def mix(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``a`` where mask is 0, ``b`` where it is 1; mask (B, H, W) broadcast over channels."""
    m = mask.to(a.dtype)
    while m.dim() < a.dim():
        m = m.unsqueeze(1)
    return a * (1 - m) + b * m
