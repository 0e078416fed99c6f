"""A faster backward for depthwise convolutions on maps smaller than their kernel, on the CPU.

When a depthwise kernel's extent (dilation x (size - 1) + 1) exceeds its map, as EfficientNet's
5x5 kernels (and the dilated ones of output stride 16) do on the 4x4 maps of a 64x64 input,
oneDNN's backward falls back to one small matrix product per channel: 3-27 ms a convolution where
the forward takes 0.2, about a third of a training step of the digits model (benchmarks/README.md,
"Speed options"). Here both gradients take about a millisecond:

    grad_input = grad_out convolved with the kernel turned by 180 degrees (stride 1: a depthwise
                 convolution, which oneDNN's forward kernel runs fast)
    grad_weight[c, i, j] = sum over n, y, x of grad_out[n, c, y, x] * x[n, c, y + i*d - p, x + j*d - p]
                 (one product of two overlapping slices per kernel tap; taps that fall wholly on
                 the padding stay 0)

:func:`use_small_map_depthwise` swaps a model's eligible convolutions (depthwise, stride 1, zero
padding, no bias) for :class:`SmallMapDepthwiseConv2d`, which takes this path only while training on
the CPU in float32 on a map smaller than the kernel's extent; weights, keys and the forward are
unchanged.
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


class SmallMapDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` (depthwise, stride 1, zero padding, no bias) whose backward, on the CPU and on a
    map smaller than the kernel's extent, is the module doc's (oneDNN's elsewhere: faster there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (not under autocast: its backward would meet bf16 gradients with float32 weights)
        if (self.training and torch.is_grad_enabled() and x.device.type == "cpu"
                and not torch.is_autocast_enabled("cpu")
                and any(d * (k - 1) + 1 > n for d, k, n in zip(self.dilation, self.kernel_size, x.shape[-2:],
                                                                strict=True))
                and not torch.jit.is_tracing()
                and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling()):
            return _DepthwiseSmallMap.apply(x, self.weight, self.padding, self.dilation)
        return super().forward(x)


def eligible(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels == m.out_channels
            and m.stride == (1, 1) and m.bias is None and m.padding_mode == "zeros"
            and isinstance(m.padding, tuple)
            and all(d * (k - 1) >= p for d, k, p in zip(m.dilation, m.kernel_size, m.padding, strict=True)))


def use_small_map_depthwise(model: nn.Module) -> int:
    """Swap every eligible convolution of ``model`` in place (the same parameters); returns how many."""
    swapped = [m for m in model.modules() if eligible(m)]
    for m in swapped:
        m.__class__ = SmallMapDepthwiseConv2d
    return len(swapped)
