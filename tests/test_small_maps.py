"""Convolutions on small maps (seg_ssl/models/small_maps.py) against torch's own convolution: the
cut kernels of dilated ones, the depthwise backward."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from seg_ssl.models.segmentor import Segmentor
from seg_ssl.models.small_maps import SmallMapConv2d, eligible, taps_on_map, use_small_map_convs


def depthwise(channels, k, dilation, padding=None):
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, k, padding=dilation * (k - 1) // 2 if padding is None else padding,
                     dilation=dilation, groups=channels, bias=False)
    fast = copy.deepcopy(conv)
    assert use_small_map_convs(fast) == 1 and type(fast) is SmallMapConv2d
    return conv, fast


def grads(conv, x, g):
    x = x.detach().requires_grad_(True)
    y = conv(x)
    gx, gw = torch.autograd.grad(y, (x, conv.weight), g)
    return y, gx, gw


@pytest.mark.parametrize("k,dilation,padding,size,channels_last", [
    (5, 1, None, (4, 4), True),    # EfficientNet's 5x5 on the 4x4 maps of a 64x64 input
    (5, 2, None, (4, 4), False),   # dilated for output stride 16: most taps fall on the padding
    (3, 2, None, (3, 5), True),    # a map that is not square, one side below the extent
    (5, 1, 1, (3, 3), False),      # padding below 'same': a 1x1 output
    (3, 2, 1, (4, 4), True),       # padding below 'same' again, dilated
])
def test_gradients_are_torchs_on_maps_smaller_than_the_kernel(k, dilation, padding, size, channels_last):
    conv, fast = depthwise(6, k, dilation, padding)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, *size, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(conv(x).shape, generator=g)
    y, gx, gw = grads(conv, x, grad_out)
    y_fast, gx_fast, gw_fast = grads(fast, x, grad_out)
    assert type(y_fast.grad_fn).__name__ == "_DepthwiseSmallMapBackward"  # the fast path ran
    assert torch.allclose(y_fast, y, rtol=1e-6, atol=1e-6)  # torch's, less the taps only on padding
    assert torch.allclose(gx_fast, gx, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gw_fast, gw, rtol=1e-5, atol=1e-6)


def test_torchs_path_elsewhere():
    conv, fast = depthwise(4, 5, 1)
    big = torch.randn(2, 4, 8, 8, requires_grad=True)  # the map holds the 5x5 kernel
    small = torch.randn(2, 4, 4, 4, requires_grad=True)
    assert type(fast(big).grad_fn).__name__ == "ConvolutionBackward0"
    with torch.no_grad():
        assert torch.equal(fast(small), conv(small))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(fast(small).grad_fn).__name__ == "ConvolutionBackward0"
    fast.eval()
    assert type(fast(small).grad_fn).__name__ == "ConvolutionBackward0"
    # stride 1, zero padding within the kernel's reach, more than one tap; "same" or depthwise
    assert eligible(nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=True))  # "same": taps can be cut
    assert eligible(nn.Conv2d(4, 4, 5, padding=1, groups=4, bias=False))  # depthwise: its backward
    assert not eligible(nn.Conv2d(4, 4, 5, padding=1, groups=4, bias=True))
    assert not eligible(nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False))
    assert not eligible(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False, padding_mode="reflect"))
    assert not eligible(nn.Conv2d(4, 4, 1))
    assert not eligible(nn.Conv2d(4, 4, 3, padding=3, groups=4, bias=False))  # padding past the kernel


def test_the_cut_kernel_keeps_exactly_the_taps_that_reach_the_map():
    """Against a count: tap i of a side of n pixels reaches the map iff some output y in [0, n)
    reads an input y + i d - p inside it."""
    for k in (2, 3, 5, 7):
        for d in range(1, 8):
            if d * (k - 1) % 2:
                continue
            p = d * (k - 1) // 2  # "same"
            for n in range(1, 12):
                reach = [any(0 <= y + i * d - p < n for y in range(n)) for i in range(k)]
                w = torch.arange(k * k, dtype=torch.float32).view(1, 1, k, k)
                cut, (ph, pw) = taps_on_map(w, (p, p), (d, d), (n, n + 30))  # wider than any reach
                kept = [i for i in range(k) if reach[i]]
                if k % 2 == 0 and not kept:
                    kept = list(range(k))  # an even kernel has no centre tap to keep: nothing is cut
                assert cut[0, 0, :, 0].tolist() == [float(i * k) for i in kept], (k, d, n)
                assert cut.shape[-1] == k and pw == p  # the wide side keeps every tap
                assert ph == p - kept[0] * d and n + 2 * ph - d * (len(kept) - 1) == n  # same size out


@pytest.mark.parametrize("dilation, size, bias, channels_last", [
    (6, (4, 4), True, True),     # ASPP's rates on the 4x4 maps of a 64x64 input at output stride 16
    (12, (4, 4), False, False),
    (18, (2, 2), True, False),
    (4, (3, 5), False, True),    # cut along the short side only
])
def test_dilated_convolutions_on_small_maps_are_torchs_without_the_padding_taps(dilation, size, bias,
                                                                                channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=dilation, dilation=dilation, bias=bias)
    fast = copy.deepcopy(conv)
    assert use_small_map_convs(fast) == 1
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, *size, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 6, *size, generator=g)
    y, gx, gw = grads(conv, x, grad_out)
    y_fast, gx_fast, gw_fast = grads(fast, x, grad_out)
    assert "SliceBackward0" in str(y_fast.grad_fn.next_functions)  # the cut kernel ran
    assert torch.allclose(y_fast, y, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gx_fast, gx, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gw_fast, gw, rtol=1e-5, atol=1e-6)
    cut_rows = [0, 2] if dilation >= size[0] else []
    assert all(torch.count_nonzero(gw_fast[:, :, r]) == 0 for r in cut_rows)
    fast.eval()
    with torch.no_grad():
        assert torch.allclose(fast(x), conv(x), rtol=1e-5, atol=1e-6)


def test_an_efficientnet_segmentor_trains_with_torchs_gradients():
    torch.manual_seed(0)
    net = Segmentor("deeplabv3plus", "tu-tf_efficientnet_lite0", num_classes=5, decoder_channels=32,
                    dropout=0.0, aspp_dropout=0.0, encoder_weights="efficientnet-lite0",
                    ).to(memory_format=torch.channels_last)
    swapped = [m for m in net.modules() if type(m) is SmallMapConv2d]
    assert len(swapped) >= 10
    reference = copy.deepcopy(net)
    for m in reference.modules():
        if type(m) is SmallMapConv2d:
            m.__class__ = nn.Conv2d
    assert reference.state_dict().keys() == net.state_dict().keys()
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (2, 64, 64))
    for model in (net, reference):
        F.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(net.named_parameters(), reference.parameters(), strict=True):
        # measured within 1.1e-5 (the ImageNet weights; some biases feed a BatchNorm, where the
        # gradient is 0 up to rounding, and are left out)
        if q.grad.abs().max() > 1e-6:
            assert (p.grad - q.grad).norm() <= 1e-4 * q.grad.norm(), name
