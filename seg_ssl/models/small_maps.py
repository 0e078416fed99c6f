"""Convolutions on maps not much larger than their kernel, faster on the CPU with the same results.

Two cases meet the digits models (64x64 inputs: 4x4 maps at output stride 16), and any model whose
deepest maps are small:

- **Taps that read only padding.** A "same"-padded convolution whose dilation reaches past the map
  (DeepLabv3+'s ASPP at rates 6, 12, 18 on a 4x4 map) multiplies zeros at every tap but the ones
  the map can reach; oneDNN computes them all, and its backward is slow there (6 ms a convolution
  where a 1x1 takes 1). The taps no output can reach are sliced off the kernel, with the padding
  reduced to match: the output is the same sum without its zero terms, and the sliced taps' weight
  gradient is 0, as it is in full (:func:`taps_on_map`).
- **Depthwise kernels larger than the map.** When a depthwise kernel's extent (dilation x (size -
  1) + 1) exceeds its map, as EfficientNet's 5x5 kernels do on 4x4 maps, oneDNN's backward falls
  back to one small matrix product per channel: 3-27 ms a convolution where the forward takes 0.2,
  about a third of a training step of the digits model. Here both gradients take about a
  millisecond:

      grad_input = grad_out convolved with the kernel turned by 180 degrees (stride 1: a depthwise
                   convolution, which oneDNN's forward kernel runs fast)
      grad_weight[c, i, j] = sum over n, y, x of grad_out[n, c, y, x] * x[n, c, y + i*d - p, x + j*d - p]
                   (one product of two overlapping slices per kernel tap; taps that fall wholly on
                   the padding stay 0)

:func:`use_small_map_convs` swaps a model's eligible convolutions (stride 1, zero padding; "same"
padding for the first case, depthwise without bias for the second) for :class:`SmallMapConv2d`,
which takes these paths on the CPU only, never while tracing or exporting (their graphs would keep
one map size's kernel), and the depthwise backward only in eager float32 training (torch.compile
guards the cut on the map size, so a compiled model cuts as the eager one does). Weights, keys and
every other path are unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _DepthwiseSmallMap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return F.conv2d(x, weight, None, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        (ph, pw), (dh, dw) = ctx.padding, ctx.dilation
        c, (kh, kw) = x.shape[1], weight.shape[-2:]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad_out, weight.flip(-2, -1), None, 1,
                              (dh * (kh - 1) - ph, dw * (kw - 1) - pw), (dh, dw), c)
        if ctx.needs_input_grad[1]:
            grad_w = weight.new_zeros(weight.shape)
            h, w = x.shape[-2:]
            oh, ow = grad_out.shape[-2:]
            for i in range(kh):  # a tap's gradient: its shifted input times grad_out, summed
                dy = i * dh - ph
                y0, y1 = max(0, -dy), min(oh, h - dy)
                for j in range(kw):
                    dx = j * dw - pw
                    x0, x1 = max(0, -dx), min(ow, w - dx)
                    if y0 < y1 and x0 < x1:
                        grad_w[:, 0, i, j] = (grad_out[:, :, y0:y1, x0:x1]
                                              * x[:, :, y0 + dy:y1 + dy, x0 + dx:x1 + dx]).sum((0, 2, 3))
        return grad_x, grad_w, None, None


def taps_on_map(weight: torch.Tensor, padding, dilation, size) -> tuple[torch.Tensor, tuple[int, int]]:
    """The kernel of a stride-1 convolution cut to the taps that can reach a map of ``size``, and the
    padding that keeps its output size. Along a side of n pixels with "same" padding p = d (k - 1) / 2,
    tap i reads input y + i d - p for output y in [0, n): it reaches the map iff |i d - p| < n. The taps
    that cannot come in pairs from both ends, so the cut kernel stays centred; sides without "same"
    padding keep every tap. Returns ``weight`` itself when nothing is cut."""
    cut = []
    for k, p, d, n in zip(weight.shape[-2:], padding, dilation, size, strict=True):
        # taps i with i d - p <= -n: the first (p - n) // d + 1 of them, never the centre one
        cut.append(min((p - n) // d + 1, (k - 1) // 2) if 2 * p == d * (k - 1) and p >= n else 0)
    (ch, cw), (kh, kw) = cut, weight.shape[-2:]
    if ch == cw == 0:
        return weight, tuple(padding)
    return (weight[:, :, ch:kh - ch, cw:kw - cw],
            (padding[0] - ch * dilation[0], padding[1] - cw * dilation[1]))


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` (stride 1, zero padding) that skips the taps reading only padding and, for a
    depthwise kernel larger than its map, takes the module doc's backward (on the CPU; torch's path
    elsewhere)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return super().forward(x)
        size = x.shape[-2:]
        weight, padding = taps_on_map(self.weight, self.padding, self.dilation, size)
        # (not under autocast: its backward would meet bf16 gradients with float32 weights)
        if (self.groups == self.in_channels == self.out_channels and self.bias is None
                and self.training and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling()
                and any(d * (k - 1) + 1 > n for d, k, n in zip(self.dilation, weight.shape[-2:], size,
                                                                strict=True))):
            return _DepthwiseSmallMap.apply(x, weight, padding, self.dilation)
        if weight is self.weight:
            return super().forward(x)
        return F.conv2d(x, weight, self.bias, 1, padding, self.dilation, self.groups)


def eligible(m: nn.Module) -> bool:
    """A convolution :class:`SmallMapConv2d` can take: stride 1, zero padding no wider than the
    kernel's reach, a kernel of more than one tap, and either "same" padding on a side or depthwise
    without bias."""
    if not (type(m) is nn.Conv2d and m.stride == (1, 1) and m.padding_mode == "zeros"
            and isinstance(m.padding, tuple) and m.kernel_size != (1, 1)
            and all(d * (k - 1) >= p for d, k, p in zip(m.dilation, m.kernel_size, m.padding, strict=True))):
        return False
    same = any(2 * p == d * (k - 1) for d, k, p in zip(m.dilation, m.kernel_size, m.padding, strict=True))
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels and m.bias is None
    return same or depthwise


def use_small_map_convs(model: nn.Module) -> int:
    """Swap every eligible convolution of ``model`` in place (the same parameters); returns how many."""
    swapped = [m for m in model.modules() if eligible(m)]
    for m in swapped:
        m.__class__ = SmallMapConv2d
    return len(swapped)
