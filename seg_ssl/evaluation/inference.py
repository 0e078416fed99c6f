"""Whole-image, sliding-window, multi-scale and flip inference for any ``x -> logits`` model.

``model`` maps a normalised (B, 3, H, W) batch whose sides are multiples of ``size_divisor`` to
logits (B, K, H, W). Inputs are zero-padded at the bottom/right (zero is the mean colour after
normalisation) and the logits cropped back, so predictions never see a resized image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h == height and w == width:
        return x
    return F.pad(x, (0, width - w, 0, height - h))


def round_up(v: int, d: int) -> int:
    return int(math.ceil(v / d) * d)


def infer_whole(model, x: torch.Tensor, size_divisor: int = 1) -> torch.Tensor:
    h, w = x.shape[-2:]
    logits = model(pad_to(x, round_up(h, size_divisor), round_up(w, size_divisor)))
    return logits[..., :h, :w]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with the last window flush with the end."""
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(n)})


def infer_slide(model, x: torch.Tensor, window: int, stride: int, size_divisor: int = 1,
                batch_windows: int = 8) -> torch.Tensor:
    """Average logits over overlapping windows (batched); any number of classes."""
    if window % size_divisor:
        raise ValueError(f"eval.window {window} must be a multiple of the output stride {size_divisor}")
    if stride <= 0:
        raise ValueError(f"eval.stride must be positive, got {stride}")
    b, _, h, w = x.shape
    ph, pw = max(h, window), max(w, window)
    xp = pad_to(x, ph, pw)
    boxes = [(t, l) for t in window_starts(ph, window, stride) for l in window_starts(pw, window, stride)]
    out = None
    count = torch.zeros((1, 1, ph, pw), device=x.device, dtype=torch.float32)
    for i in range(0, len(boxes), batch_windows):
        chunk = boxes[i:i + batch_windows]
        crops = torch.cat([xp[:, :, t:t + window, l:l + window] for t, l in chunk], 0)
        logits = model(crops).float()
        if out is None:
            out = torch.zeros((b, logits.shape[1], ph, pw), device=x.device, dtype=torch.float32)
        for j, (t, l) in enumerate(chunk):
            out[:, :, t:t + window, l:l + window] += logits[j * b:(j + 1) * b]
            count[:, :, t:t + window, l:l + window] += 1
    return (out / count)[..., :h, :w]


def predict_probs(model, x: torch.Tensor, mode: str = "whole", size_divisor: int = 1,
                  window: int | None = None, stride: int | None = None, scales=(1.0,),
                  flip: bool = False, batch_windows: int = 8) -> torch.Tensor:
    """Softmax probabilities (B, K, H, W) averaged over scales and (optionally) horizontal flips."""
    h, w = x.shape[-2:]
    total = None
    n = 0
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            xi = torch.flip(xs, dims=[-1]) if flipped else xs
            if mode == "whole":
                logits = infer_whole(model, xi, size_divisor)
            elif mode == "slide":
                win = window or 512
                logits = infer_slide(model, xi, win, stride or math.ceil(win * 2 / 3), size_divisor,
                                     batch_windows)
            else:
                raise ValueError(f"eval.mode {mode!r}: expected whole or slide")
            if flipped:
                logits = torch.flip(logits, dims=[-1])
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.float().softmax(1)
            total = probs if total is None else total + probs
            n += 1
    return total / n
