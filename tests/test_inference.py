import pytest
import torch
import torch.nn as nn

from seg_ssl.evaluation.inference import infer_slide, infer_whole, predict_probs, window_starts
from seg_ssl.models.segmentor import Segmentor


class Pointwise(nn.Module):
    """A 1x1-conv model: its output at a pixel depends only on that pixel, so every mode must agree."""

    def __init__(self, k=5):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, 1)

    def forward(self, x):
        return self.conv(x)


def test_window_starts_cover_and_end_flush():
    assert window_starts(100, 40, 30) == [0, 30, 60]
    assert window_starts(40, 40, 30) == [0] and window_starts(10, 40, 30) == [0]
    for length, win, stride in [(97, 32, 21), (1024, 800, 534), (2048, 800, 534)]:
        starts = window_starts(length, win, stride)
        assert starts[-1] + win == length and all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_modes_agree_for_a_pointwise_model():
    m = Pointwise()
    x = torch.randn(2, 3, 37, 53)
    whole = infer_whole(m, x, size_divisor=16)
    assert whole.shape == (2, 5, 37, 53)
    torch.testing.assert_close(whole, m(x))
    slide = infer_slide(m, x, window=16, stride=11, size_divisor=16, batch_windows=3)
    torch.testing.assert_close(slide, whole)
    # single scale without flip is exactly the softmax of whole-image logits
    torch.testing.assert_close(predict_probs(m, x, "whole", 16), whole.softmax(1))
    # a pointwise model commutes with flips and (nearly) with resizing
    torch.testing.assert_close(predict_probs(m, x, "slide", 16, window=32, flip=True), whole.softmax(1))
    smooth = torch.nn.functional.interpolate(torch.randn(2, 3, 5, 7), size=(37, 53), mode="bilinear")
    ms = predict_probs(m, smooth, "whole", 16, scales=(1.0, 2.0))
    assert (ms.argmax(1) == m(smooth).argmax(1)).float().mean() > 0.97


def test_slide_covering_the_image_equals_whole_for_a_real_network():
    net = Segmentor("deeplabv3plus", "resnet18", num_classes=4, encoder_depth=4, decoder_channels=32).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(infer_slide(net, x, 64, 32, net.size_divisor), infer_whole(net, x, 16))
        # windows smaller than the image: a valid prediction map of the right size, many classes
        out = predict_probs(net, x, "slide", 16, window=32, stride=16, flip=True, scales=(0.75, 1.0))
    assert out.shape == (1, 4, 64, 64)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 64, 64))


def test_slide_rejects_windows_not_divisible_by_stride():
    with pytest.raises(ValueError, match="multiple of the output stride 16"):
        infer_slide(Pointwise(), torch.randn(1, 3, 40, 40), 20, 10, 16)
