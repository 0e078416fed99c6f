"""Evaluation protocols for any ``x -> logits`` model: one mode per way of scoring an image.

``model`` maps a normalised (B, 3, H, W) batch to logits (B, K, H, W); inputs whose sides are not
multiples of ``size_divisor`` are zero-padded at the bottom/right (zero is the mean colour after
normalisation) and the logits cropped back. The releases' networks take any size (divisor 1).

Modes (``eval.mode``; docs/release_protocols.md gives each release's source lines):

- ``whole``: the whole image at once (the UniMatch V1 release's 'original' on VOC).
- ``slide``: mmseg's sliding window: windows of ``window`` at ``stride``, the last one flush with
  the image edge (an image smaller than the window is padded), logits averaged.
- ``slide_unimatch``: UniMatch V1's: windows from the image origin at ``stride`` (int(window x 2/3)),
  those past the edge truncated to the image, softmax probabilities summed.
- ``slide_cps``: CPS's (TorchSemiSeg's evaluator): an image no longer than the window on its long
  side is centred on a mean-colour window (every VOC image at 512); a longer one is centred on a
  black canvas of at least the window per side and scored by flush windows at ``stride``
  (ceil(window x 2/3)), logits summed.
- ``pad_cac``: CAC's: the image reflect-padded at the bottom/right to a multiple of ``multiple``
  (8), the logits cropped back.
- ``resize_unimatch_v2``: UniMatch V2's 'original': the image resized (bilinear, align_corners) to
  the nearest multiple of ``multiple`` (14) per side, int(h / 14 + 0.5) x 14, the logits resized back.
- ``slide_unimatch_v2``: UniMatch V2's Cityscapes windows: ``window`` at ``stride`` (int(window x 2/3)),
  the last one flush with the edge, softmax probabilities summed.

Windows run ``batch_windows`` at a time (consecutive windows of one size), and what is kept per
image is one (B, K, H, W) sum: memory does not grow with the number of windows.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seg_ssl.evaluation.protocols import MULTIPLE_MODES, WINDOW_MODES, default_stride

MODES = ("whole", "slide", "slide_unimatch", "slide_cps", "pad_cac", "resize_unimatch_v2",
         "slide_unimatch_v2")



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


def sum_windows(model, x: torch.Tensor, boxes, size_divisor: int = 1, batch_windows: int = 8,
                probabilities: bool = False):
    """``(total, count)``: each window's logits (or softmax probabilities) added at its place, in
    the order of ``boxes`` ((top, left, height, width) each), and how many windows cover a pixel.
    Consecutive windows of one size run together, ``batch_windows`` at most per forward."""
    b, _, h, w = x.shape
    total = None
    count = torch.zeros((1, 1, h, w), device=x.device, dtype=torch.float32)
    i = 0
    while i < len(boxes):
        j = i + 1
        while j < len(boxes) and j - i < batch_windows and boxes[j][2:] == boxes[i][2:]:
            j += 1
        chunk = boxes[i:j]
        crops = torch.cat([x[:, :, top:top + hh, left:left + ww] for top, left, hh, ww in chunk], 0)
        out = infer_whole(model, crops, size_divisor).float()
        if probabilities:
            out = out.softmax(1)
        if total is None:
            total = torch.zeros((b, out.shape[1], h, w), device=x.device, dtype=torch.float32)
        for k, (top, left, hh, ww) in enumerate(chunk):
            total[:, :, top:top + hh, left:left + ww] += out[k * b:(k + 1) * b]
            count[:, :, top:top + hh, left:left + ww] += 1
        i = j
    return total, count


def _check_window(window: int, stride: int, size_divisor: int) -> None:
    if window % size_divisor:
        raise ValueError(f"eval.window {window} must be a multiple of the output stride {size_divisor}")
    if stride <= 0:
        raise ValueError(f"eval.stride must be positive, got {stride}")


def infer_slide(model, x: torch.Tensor, window: int, stride: int, size_divisor: int = 1,
                batch_windows: int = 8) -> torch.Tensor:
    """mmseg-style: logits averaged over flush windows of a bottom/right-padded image."""
    _check_window(window, stride, size_divisor)
    h, w = x.shape[-2:]
    ph, pw = max(h, window), max(w, window)
    boxes = [(y0, x0, window, window) for y0 in window_starts(ph, window, stride)
             for x0 in window_starts(pw, window, stride)]
    total, count = sum_windows(model, pad_to(x, ph, pw), boxes, size_divisor, batch_windows)
    return (total / count)[..., :h, :w]


def infer_slide_unimatch(model, x: torch.Tensor, window: int, stride: int, size_divisor: int = 1,
                         batch_windows: int = 8) -> torch.Tensor:
    """UniMatch V1: windows start at 0, stride, 2 x stride ... while inside the image, each cut at
    the image edge; softmax probabilities summed (returned divided by the cover count: the same
    argmax, and probabilities that average with other scales)."""
    _check_window(window, stride, 1)  # windows of any size are padded to the divisor
    h, w = x.shape[-2:]
    boxes = [(y0, x0, min(window, h - y0), min(window, w - x0)) for y0 in range(0, h, stride)
             for x0 in range(0, w, stride)]
    total, count = sum_windows(model, x, boxes, size_divisor, batch_windows, probabilities=True)
    return total / count


def centre_margins(length: int, target: int) -> tuple[int, int]:
    """CPS's pad_image_to_shape: the smaller half of the padding before, the larger after."""
    pad = max(target - length, 0)
    return pad // 2, pad - pad // 2


def infer_slide_cps(model, x: torch.Tensor, window: int, stride: int, size_divisor: int = 1,
                    batch_windows: int = 8, black=None) -> torch.Tensor:
    """CPS: a long side within the window: the image centred on a window of zeros (the mean colour
    after normalisation), one forward. Longer: the image centred on a canvas of at least the window
    per side padded with ``black`` (the normalised value of a black pixel: the release pads the raw
    image with 0 before normalising), flush windows at ``stride``, logits summed (returned divided by
    the cover count)."""
    _check_window(window, stride, size_divisor)
    b, c, h, w = x.shape
    (top, bottom), (left, right) = centre_margins(h, window), centre_margins(w, window)
    if max(h, w) <= window:
        logits = infer_whole(model, F.pad(x, (left, right, top, bottom)), size_divisor)
        return logits[..., top:top + h, left:left + w]
    fill = torch.zeros(c) if black is None else torch.as_tensor(black, dtype=x.dtype)
    canvas = fill.to(x.device).view(1, c, 1, 1).expand(b, c, h + top + bottom, w + left + right).clone()
    canvas[:, :, top:top + h, left:left + w] = x
    ph, pw = canvas.shape[-2:]
    boxes = [(y0, x0, window, window) for y0 in window_starts(ph, window, stride)
             for x0 in window_starts(pw, window, stride)]
    total, count = sum_windows(model, canvas, boxes, size_divisor, batch_windows)
    return (total / count)[..., top:top + h, left:left + w]


def infer_pad_cac(model, x: torch.Tensor, multiple: int = 8, size_divisor: int = 1) -> torch.Tensor:
    """CAC: reflect padding at the bottom/right to a multiple of ``multiple`` (and of the network's
    divisor), logits cropped back."""
    h, w = x.shape[-2:]
    m = math.lcm(multiple, size_divisor)
    ph, pw = round_up(h, m) - h, round_up(w, m) - w
    padded = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
    return model(padded)[..., :h, :w]


def infer_resize_unimatch_v2(model, x: torch.Tensor, multiple: int = 14,
                             size_divisor: int = 1) -> torch.Tensor:
    """UniMatch V2: bilinear resize (align_corners) to int(side / multiple + 0.5) x multiple per
    side, forward, logits resized back the same way."""
    h, w = x.shape[-2:]
    nh, nw = (max(multiple, int(s / multiple + 0.5) * multiple) for s in (h, w))
    resized = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=True)
    logits = infer_whole(model, resized, size_divisor)
    return F.interpolate(logits, (h, w), mode="bilinear", align_corners=True)


def infer_slide_unimatch_v2(model, x: torch.Tensor, window: int, stride: int, size_divisor: int = 1,
                            batch_windows: int = 8) -> torch.Tensor:
    """UniMatch V2: flush windows at ``stride``, softmax probabilities summed (returned divided by
    the cover count). A side shorter than the window gets one window of that side (padded to the
    divisor); the release's loop steps to a negative offset there, which Cityscapes never meets."""
    _check_window(window, stride, 1)
    h, w = x.shape[-2:]
    boxes = [(y0, x0, min(window, h), min(window, w)) for y0 in window_starts(h, window, stride)
             for x0 in window_starts(w, window, stride)]
    total, count = sum_windows(model, x, boxes, size_divisor, batch_windows, probabilities=True)
    return total / count


def scores(model, x: torch.Tensor, mode: str, size_divisor: int = 1, window: int | None = None,
           stride: int | None = None, multiple: int | None = None, batch_windows: int = 8,
           black=None) -> tuple[torch.Tensor, bool]:
    """One pass of ``mode`` over ``x``: ``(scores, are_probabilities)`` at the input size."""
    if mode not in MODES:
        raise ValueError(f"eval.mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode in WINDOW_MODES:
        window = window or 512
        stride = stride or default_stride(mode, window)
    multiple = multiple or MULTIPLE_MODES.get(mode)
    if mode == "whole":
        return infer_whole(model, x, size_divisor), False
    if mode == "slide":
        return infer_slide(model, x, window, stride, size_divisor, batch_windows), False
    if mode == "slide_unimatch":
        return infer_slide_unimatch(model, x, window, stride, size_divisor, batch_windows), True
    if mode == "slide_cps":
        return infer_slide_cps(model, x, window, stride, size_divisor, batch_windows, black), False
    if mode == "pad_cac":
        return infer_pad_cac(model, x, multiple, size_divisor), False
    if mode == "resize_unimatch_v2":
        return infer_resize_unimatch_v2(model, x, multiple, size_divisor), False
    return infer_slide_unimatch_v2(model, x, window, stride, size_divisor, batch_windows), True


def predict_probs(model, x: torch.Tensor, mode: str = "whole", size_divisor: int = 1,
                  window: int | None = None, stride: int | None = None, scales=(1.0,),
                  flip: bool = False, batch_windows: int = 8, multiple: int | None = None,
                  black=None) -> torch.Tensor:
    """Softmax probabilities (B, K, H, W) averaged over scales and (optionally) horizontal flips."""
    h, w = x.shape[-2:]
    total = None
    n = 0
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            xi = torch.flip(xs, dims=[-1]) if flipped else xs
            out, are_probs = scores(model, xi, mode, size_divisor, window, stride, multiple,
                                    batch_windows, black)
            if flipped:
                out = torch.flip(out, dims=[-1])
            if out.shape[-2:] != (h, w):
                out = F.interpolate(out.float(), size=(h, w), mode="bilinear", align_corners=False)
            probs = out.float() if are_probs else out.float().softmax(1)
            total = probs if total is None else total + probs
            n += 1
    return total / n
