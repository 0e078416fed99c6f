import pytest
import torch
import torch.nn as nn

from seg_ssl.evaluation.inference import MODES, infer_slide, infer_whole, predict_probs, window_starts
from seg_ssl.evaluation.protocols import describe, protocol
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
        assert starts[-1] + win == length and all(b - a <= stride
                                                  for a, b in zip(starts, starts[1:], strict=False))


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


class Recorder(nn.Module):
    """A pointwise model that records the shape of every batch it is given."""

    def __init__(self, k=5):
        super().__init__()
        self.inner, self.calls = Pointwise(k), []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.inner(x)


def test_every_mode_is_a_config_choice_and_agrees_with_whole_for_a_pointwise_model():
    from seg_ssl.config import EVAL_MODES, SCHEMA
    assert tuple(EVAL_MODES) == MODES and list(SCHEMA["eval"]["mode"].choices) == list(MODES)
    m = Pointwise()
    x = torch.randn(2, 3, 28, 42)  # multiples of 14: the V2 resize is the identity
    whole = m(x).softmax(1)
    for mode in MODES:
        probs = predict_probs(m, x, mode, window=16, stride=9, black=[-2.0, -1.0, 0.5])
        torch.testing.assert_close(probs, whole, msg=mode)
    with pytest.raises(ValueError, match="eval.mode 'slid': expected one of whole, slide"):
        predict_probs(m, x, "slid")


def test_unimatch_v1_windows_start_at_the_origin_and_are_cut_at_the_edge_in_batches():
    m = Recorder()
    x = torch.randn(1, 3, 130, 258)
    probs = predict_probs(m, x, "slide_unimatch", window=101, batch_windows=2)
    # stride int(101 x 2 / 3) = 67: rows 0, 67 (63 high), columns 0, 67, 134 (101 wide), 201 (57 wide);
    # consecutive windows of one size share a forward, two at most
    assert m.calls == [(2, 3, 101, 101), (1, 3, 101, 101), (1, 3, 101, 57), (2, 3, 63, 101), (1, 3, 63, 101),
                       (1, 3, 63, 57)]
    torch.testing.assert_close(probs, m.inner(x).softmax(1))


def test_cps_centres_the_image_on_one_window_or_slides_flush_windows_over_a_black_canvas():
    class Canvas(nn.Module):  # logits that say which window pixels are padding, and the window's size
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, x):
            self.seen.append(x.clone())
            return torch.cat([x[:, :1], torch.zeros_like(x[:, :1])], 1)

    m = Canvas()
    x = torch.ones(1, 3, 37, 45)
    predict_probs(m, x, "slide_cps", window=64)
    (seen,) = m.seen  # one 64 x 64 window, the image centred: margins 13 / 14 rows, 9 / 10 columns
    assert seen.shape == (1, 3, 64, 64) and seen[0, 0, 13:50, 9:54].eq(1).all()
    assert seen[0].sum() == 3 * 37 * 45  # zeros around it
    m.seen.clear()
    x = torch.ones(1, 3, 50, 90)  # longer than the window: rows padded to 64 with black, flush windows
    predict_probs(m, x, "slide_cps", window=64, black=[-2.0, -1.0, 0.5], batch_windows=8)
    (seen,) = m.seen  # stride ceil(64 x 2 / 3) = 43: columns 0 and 90 - 64 = 26, in one forward
    assert seen.shape == (2, 3, 64, 64)
    assert seen[:, 0, :7].eq(-2).all() and seen[:, 0, 7:57].eq(1).all() and seen[:, 2, 57:].eq(0.5).all()


def test_cac_reflects_and_v2_resizes_to_their_multiples():
    m = Recorder()
    x = torch.randn(1, 3, 37, 45)
    out = predict_probs(m, x, "pad_cac")
    assert m.calls == [(1, 3, 40, 48)]
    torch.testing.assert_close(out, m.inner(x).softmax(1))
    predict_probs(m, x, "pad_cac", size_divisor=16)  # and to the network's own divisor
    assert m.calls[-1] == (1, 3, 48, 48)
    predict_probs(m, torch.randn(1, 3, 375, 500), "resize_unimatch_v2")
    assert m.calls[-1] == (1, 3, 378, 504)  # int(375 / 14 + 0.5) x 14, int(500 / 14 + 0.5) x 14
    predict_probs(m, torch.randn(1, 3, 1024, 2048), "slide_unimatch_v2", window=798)
    assert m.calls[-1] == (8, 3, 798, 798)  # rows 0, 226; columns 0, 532, 1064, 1250


def test_protocols_resolve_their_defaults_and_name_themselves():
    assert protocol("slide_unimatch", window=801) == {"mode": "slide_unimatch", "window": 801, "stride": 534,
                                                      "scales": [1.0], "flip": False}
    assert protocol("slide_cps", window=512)["stride"] == 342
    assert protocol("slide", window=800)["stride"] == 534
    assert protocol("slide_unimatch_v2", window=798)["stride"] == 532
    assert protocol("pad_cac") == {"mode": "pad_cac", "multiple": 8, "scales": [1.0], "flip": False}
    assert protocol("resize_unimatch_v2")["multiple"] == 14 and protocol("whole", window=512) == \
        {"mode": "whole", "scales": [1.0], "flip": False}
    line = describe(protocol("slide_unimatch", window=801, scales=(0.75, 1.0), flip=True))
    assert line == ("slide_unimatch (UniMatch V1: windows of 801 from the origin at stride 534, cut at the "
                    "edges, softmax summed; scales [0.75, 1.0]; with flips)")
