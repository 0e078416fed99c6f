"""The small-map depthwise backward (seg_ssl/models/depthwise.py) against torch's own gradients."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from seg_ssl.models.depthwise import SmallMapDepthwiseConv2d, eligible, use_small_map_depthwise
from seg_ssl.models.segmentor import Segmentor


def depthwise(channels, k, dilation, padding=None):
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, k, padding=dilation * (k - 1) // 2 if padding is None else padding,
                     dilation=dilation, groups=channels, bias=False)
    fast = copy.deepcopy(conv)
    assert use_small_map_depthwise(fast) == 1 and type(fast) is SmallMapDepthwiseConv2d
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
    assert torch.equal(y_fast, y)  # the forward is torch's
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
    # only depthwise, stride 1, zero-padded, bias-free convolutions are swapped
    assert not eligible(nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False))
    assert not eligible(nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False))
    assert not eligible(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=True))
    assert not eligible(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False, padding_mode="reflect"))


def test_an_efficientnet_segmentor_trains_with_torchs_gradients():
    torch.manual_seed(0)
    net = Segmentor("deeplabv3plus", "tu-tf_efficientnet_lite0", num_classes=5, decoder_channels=32,
                    dropout=0.0, aspp_dropout=0.0, encoder_weights="efficientnet-lite0",
                    ).to(memory_format=torch.channels_last)
    swapped = [m for m in net.modules() if type(m) is SmallMapDepthwiseConv2d]
    assert len(swapped) >= 10
    reference = copy.deepcopy(net)
    for m in reference.modules():
        if type(m) is SmallMapDepthwiseConv2d:
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
