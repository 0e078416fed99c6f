"""Each published config scores an image as its release's evaluation does.

The same network (a release network with random weights under the release's key names, converted
as tools/convert_checkpoint.py converts it: test_release_networks.py checks its logits against the
release's forward) scores one image twice: by the release's evaluation, transcribed below from the
release's code (file and lines cited per function), and by seg_ssl's evaluation under the published
config (seg_ssl.evaluation, as tools/eval.py calls it). Every pixel gets the same class. Each test
also shows that another protocol gives other classes on that image, so the check can fail.

Images are normalised in float32 as seg_ssl's data pipeline does for both (the CPS release
normalises in float64 and casts: a difference of the loader's rounding, not of the protocol).
Both evaluations run with oneDNN off: its convolutions round a batch of windows differently from
one window alone (logits ~1e-7 apart relative), which flips near-tied pixels (8 of 2,097,152 on the
full-size Cityscapes image, measured); PyTorch's own convolutions compute each image of a batch
alone, so a difference left is the protocol's.
"""
import functools
import math
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import ROOT
from reference_releases import random_release_state
from seg_ssl.config import load_config
from seg_ssl.data.transforms import normalize
from seg_ssl.evaluation.evaluator import predict_kwargs
from seg_ssl.evaluation.inference import predict_probs
from seg_ssl.methods import build_method
from seg_ssl.models.convert import from_release
from seg_ssl.models.weights import load_strict


@functools.lru_cache(maxsize=None)
def release_network(release: str, num_classes: int):
    """The release's network as seg_ssl builds it for the published configs, in eval mode, holding
    converted random release weights: ``(predict_fn, size_divisor)`` as tools/eval.py gets them.

    Through 50 random layers the features barely vary over an image (the logits' spread over pixels
    is ~5% of their spread over classes): every pixel would get one class. The classifier is
    rescaled and re-centred on a smooth image so that the logits vary by ~1 over the image and
    several classes win somewhere: still one fixed network, the same for both evaluations."""
    dataset = "voc" if num_classes == 21 else "cityscapes"
    cfg = load_config(os.path.join(ROOT, "configs", f"{dataset}_{release}.yaml"))
    method = build_method(cfg)
    model = method.build_model()
    state = random_release_state(release, seed=1, num_classes=num_classes)
    load_strict(model, from_release(state, release))
    model.eval()
    net = method.predictor(model)
    classifier = net.classifier[-1]
    with torch.no_grad():
        logits = net(as_input(smooth_image(96, 160, seed=9), cfg))
        mean = logits.mean((0, 2, 3))
        scale = 1.0 / (logits - mean.view(1, -1, 1, 1)).std().item()
        classifier.weight.mul_(scale)
        classifier.bias.sub_(mean).mul_(scale)
    return net, method.size_divisor(model)


@pytest.fixture(autouse=True)
def batch_invariant_convolutions():
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = enabled


def published_network(release: str, dataset: str, *overrides, classes: int | None = None):
    """The published config (with ``overrides``) and its release network: ``(cfg, net, divisor)``.
    ``classes``: the network's class count where it is not the dataset's (the scaled-down Cityscapes
    checks share the VOC network: a protocol does not depend on the number of classes)."""
    cfg = load_config(os.path.join(ROOT, "configs", f"{dataset}_{release}.yaml"), list(overrides))
    return (cfg, *release_network(release, classes or cfg.data.num_classes))


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """HxWx3 uint8: colour fields varying over tens of pixels, with a little pixel noise."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, size=(max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
    field = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 4, (h, w, 3))
    return np.clip(field, 0, 255).astype(np.uint8)


def as_input(image: np.ndarray, cfg) -> torch.Tensor:
    return normalize(image, cfg.data.mean, cfg.data.std)[None]


@torch.no_grad()
def seg_ssl_classes(cfg, net, divisor, x, *overrides) -> torch.Tensor:
    """seg_ssl's prediction under ``cfg``'s eval section (tools/eval.py's path), or with ``overrides``
    of it (``mode=slide``)."""
    kwargs = {**predict_kwargs(cfg), **dict(o.split("=") for o in overrides)}
    for key in ("window", "stride"):
        kwargs[key] = int(kwargs[key]) if kwargs[key] is not None else None
    return predict_probs(net, x, size_divisor=divisor, **kwargs).argmax(1)


def assert_same_classes(ours: torch.Tensor, theirs: torch.Tensor, classes_at_least: int = 3) -> None:
    ours, theirs = torch.as_tensor(ours), torch.as_tensor(theirs)
    assert ours.shape == theirs.shape
    assert len(theirs.unique()) >= classes_at_least  # a map of several classes, not a constant
    differ = int((ours != theirs).sum())
    assert differ == 0, f"{differ} of {theirs.numel()} pixels get another class than the release's evaluation"


# ---------------------------------------------------------------------------------------------
# the releases' evaluations, transcribed (one image, no metric: the class map)

@torch.no_grad()
def unimatch_v1_classes(model, img, mode, crop_size, nclass):
    """LiheYoung/UniMatch supervised.py evaluate (7292bac). 'original' (:65): the image as it is.
    'sliding_window' (:43-56): a window of crop_size steps by int(crop_size * 2 / 3) down and across
    from the top-left corner while its start lies inside the image; each window is cut at the image's
    edge and its softmax added into a zero-initialised per-pixel sum; the argmax of the sum."""
    if mode == "original":
        return model(img).argmax(1)
    step = int(crop_size * 2 / 3)
    h, w = img.shape[-2:]
    summed = torch.zeros(img.shape[0], nclass, h, w)
    y = 0
    while y < h:
        x = 0
        while x < w:
            y1, x1 = min(h, y + crop_size), min(w, x + crop_size)
            summed[:, :, y:y1, x:x1] += model(img[:, :, y:y1, x:x1]).softmax(dim=1)
            x += step
        y += step
    return summed.argmax(1)


def cps_centre_pad(img: np.ndarray, size: int):
    """furnace/utils/img_utils.py pad_image_to_shape: pad each side to ``size`` with 0, the smaller
    half above / left (pad // 2), the rest below / right; margins returned for cutting back."""
    ph, pw = max(size - img.shape[0], 0), max(size - img.shape[1], 0)
    margin = (ph // 2, ph // 2 + ph % 2, pw // 2, pw // 2 + pw % 2)
    return cv2.copyMakeBorder(img, *margin, cv2.BORDER_CONSTANT, value=0), margin


@torch.no_grad()
def cps_classes(model, image, crop, stride_rate, mean, std, nclass):
    """charlesCXK/TorchSemiSeg furnace/engine/evaluator.py (d8e058d): eval.py's func_per_iteration
    calls sliding_eval (:202-216) at the one scale of eval_scale_array [1], i.e. scale_process
    (:218-273) on the raw HxWx3 image. process_image (:297-314) normalises and then pads to the crop
    with 0 (the mean colour), centred. A long side within the crop (:226-230): one padded forward, the
    margins cut off. Else (:231-266): the raw image centred on a canvas of at least the crop, padded
    with 0 (black) before normalising; windows at stride ceil(crop * stride_rate), each placed to end
    at min(start + crop, canvas side) and start crop before that; logits summed (the division by the
    count is commented out), margins cut. Then cv2.resize to the image size (:268-271; the same size
    here) and argmax (:214)."""
    def process(img):
        x = normalize(img, mean, std).permute(1, 2, 0).numpy()
        x, margin = cps_centre_pad(x, crop)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None], margin

    rows, cols = image.shape[:2]
    if max(rows, cols) <= crop:
        x, m = process(image)
        score = model(x)[0]
        score = score[:, m[0]:score.shape[1] - m[1], m[2]:score.shape[2] - m[3]]
    else:
        stride = int(np.ceil(crop * stride_rate))
        canvas, m = cps_centre_pad(image, crop)
        prow, pcol = canvas.shape[:2]
        score = torch.zeros(nclass, prow, pcol)
        for gy in range(int(np.ceil((prow - crop) / stride)) + 1):
            for gx in range(int(np.ceil((pcol - crop) / stride)) + 1):
                ey, ex = min(gy * stride + crop, prow), min(gx * stride + crop, pcol)
                sy, sx = ey - crop, ex - crop
                x, tm = process(canvas[sy:ey, sx:ex])
                s = model(x)[0]
                score[:, sy:ey, sx:ex] += s[:, tm[0]:s.shape[1] - tm[1], tm[2]:s.shape[2] - tm[3]]
        score = score[:, m[0]:prow - m[1], m[2]:pcol - m[3]]
    out = cv2.resize(score.permute(1, 2, 0).contiguous().numpy(), (cols, rows),
                     interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(out.argmax(2))[None]


@torch.no_grad()
def cac_classes(model, data):
    """dvlab-research/Context-Aware-Consistency trainer.py _valid_epoch:148-155 (a7cd9b4): reflect
    padding at the bottom and right to the next multiples of 8, the output cut back to H x W;
    utils/metrics.py eval_metrics takes output.max(1)."""
    h, w = data.shape[-2:]
    pad_h, pad_w = math.ceil(h / 8) * 8 - h, math.ceil(w / 8) * 8 - w
    out = model(F.pad(data, pad=(0, pad_w, 0, pad_h), mode="reflect"))
    return out[:, :, :h, :w].max(1)[1]


@torch.no_grad()
def unimatch_v2_classes(model, img, mode, crop_size, nclass, multiplier=14):
    """LiheYoung/UniMatch-V2 supervised.py evaluate (f6afb4d; the same lines at 70fe066).
    'sliding_window' (:47-65): windows of crop_size at offsets 0, then min(previous + int(crop_size
    * 2 / 3), side - crop_size) until one ends at the edge, down and across; softmax summed.
    'original' with multiplier 14 (:70-83): bilinear resize with align_corners to int(side / 14 +
    0.5) * 14 per side, forward, the logits resized back the same way; argmax."""
    if mode == "sliding_window":
        h, w = img.shape[-2:]
        step = int(crop_size * 2 / 3)
        summed = torch.zeros(img.shape[0], nclass, h, w)
        y = 0
        while True:
            x = 0
            while True:
                window = img[:, :, y:y + crop_size, x:x + crop_size]
                summed[:, :, y:y + crop_size, x:x + crop_size] += model(window).softmax(dim=1)
                if x == w - crop_size:
                    break
                x = min(x + step, w - crop_size)
            if y == h - crop_size:
                break
            y = min(y + step, h - crop_size)
        return summed.argmax(1)
    h, w = img.shape[-2:]
    size = (int(h / multiplier + 0.5) * multiplier, int(w / multiplier + 0.5) * multiplier)
    pred = model(F.interpolate(img, size, mode="bilinear", align_corners=True))
    return F.interpolate(pred, (h, w), mode="bilinear", align_corners=True).argmax(1)


# ---------------------------------------------------------------------------------------------

def test_unimatch_v1_voc_scores_the_whole_unpadded_image():
    cfg, net, divisor = published_network("unimatch", "voc")
    assert cfg.eval.mode == "whole" and divisor == 1
    image = smooth_image(75, 99)
    x = as_input(image, cfg)
    theirs = unimatch_v1_classes(net, x, "original", cfg.data.crop_size, 21)
    assert_same_classes(seg_ssl_classes(cfg, net, divisor, x), theirs)
    # padding to a multiple of 16 (a whole mode for a network that needs it) is another protocol
    assert (seg_ssl_classes(cfg, lambda t: net(t), 16, x) != theirs).any()


class AnySize(nn.Module):
    """A small network that takes any size, as the releases' networks do: two strided convs (sizes
    rounded up), a pooled context term (so a window's prediction depends on the whole window, as
    ASPP's pooling branch makes it) and logits resized to the input with align_corners."""

    def __init__(self, classes=19):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 16, 5, 4, 2), nn.Conv2d(16, 32, 3, 2, 1)
        self.context, self.head = nn.Conv2d(32, 32, 1), nn.Conv2d(32, classes, 1)

    def forward(self, x):
        f = F.relu(self.b(F.relu(self.a(x))))
        f = f + self.context(f.mean((2, 3), keepdim=True))
        return F.interpolate(self.head(f), x.shape[-2:], mode="bilinear", align_corners=True)


@pytest.mark.parametrize("size, overrides", [
    ((66, 130), ("eval.window=51", "eval.stride=34")),  # the release network; 801 / 534 scaled down
    ((1024, 2048), ()),  # the published config as it is, on a network that takes any size
])
def test_unimatch_v1_cityscapes_slides_from_the_origin_and_sums_probabilities(size, overrides):
    # (the release network at full size, 16 windows of 801 x 801 through ResNet-50, takes minutes on
    # this CPU: run once, 0 of 2,097,152 pixels differed; docs/release_protocols.md)
    if overrides:
        cfg, net, divisor = published_network("unimatch", "cityscapes", *overrides, classes=21)
        classes = 21
    else:
        cfg = load_config(os.path.join(ROOT, "configs", "cityscapes_unimatch.yaml"))
        net, divisor, classes = AnySize(19).eval(), 1, 19
    assert cfg.eval.mode == "slide_unimatch" and cfg.eval.window == (51 if overrides else cfg.data.crop_size)
    x = as_input(smooth_image(*size), cfg)
    theirs = unimatch_v1_classes(net, x, "sliding_window", cfg.eval.window, classes)
    assert_same_classes(seg_ssl_classes(cfg, net, divisor, x), theirs)
    if overrides:  # mmseg's windows (the last flush with the edge, logits averaged) score other classes
        assert (seg_ssl_classes(cfg, net, divisor, x, "mode=slide") != theirs).any()


@pytest.mark.parametrize("size, overrides", [
    ((37, 45), ("eval.window=64",)),    # a VOC image within the window: centred on the mean colour
    ((50, 90), ("eval.window=64",)),    # longer than the window: a black canvas, flush windows
    pytest.param((375, 500), (), marks=pytest.mark.slow),  # a VOC image under the published 512
])
def test_cps_voc_centres_images_as_its_evaluator_does(size, overrides):
    cfg, net, divisor = published_network("cps", "voc", *overrides)
    assert cfg.eval.mode == "slide_cps"
    image = smooth_image(*size)
    x = as_input(image, cfg)
    theirs = cps_classes(net, image, cfg.eval.window, 2 / 3, cfg.data.mean, cfg.data.std, 21)
    assert_same_classes(seg_ssl_classes(cfg, net, divisor, x), theirs)
    assert (seg_ssl_classes(cfg, net, divisor, x, "mode=whole") != theirs).any()  # unpadded: other classes


def test_cps_cityscapes_sums_the_logits_of_flush_windows():
    # 800 / 534 scaled down, with the VOC network (the full size: the same code as VOC's slow case)
    cfg, net, divisor = published_network("cps", "cityscapes", "eval.window=50", "eval.stride=34", classes=21)
    image = smooth_image(66, 130)
    x = as_input(image, cfg)
    theirs = cps_classes(net, image, 50, 2 / 3, cfg.data.mean, cfg.data.std, 21)
    assert_same_classes(seg_ssl_classes(cfg, net, divisor, x), theirs)
    assert (seg_ssl_classes(cfg, net, divisor, x, "mode=slide_unimatch") != theirs).any()


@pytest.mark.parametrize("dataset", ["voc", "cityscapes"])
def test_cac_reflect_pads_to_a_multiple_of_8(dataset):
    cfg, net, divisor = published_network("cac", dataset, classes=21)
    assert cfg.eval.mode == "pad_cac"
    x = as_input(smooth_image(45, 61), cfg)
    theirs = cac_classes(net, x)
    assert_same_classes(seg_ssl_classes(cfg, net, divisor, x), theirs)
    assert (seg_ssl_classes(cfg, net, divisor, x, "mode=whole") != theirs).any()  # unpadded: other classes


class Patch14(nn.Module):
    """A stand-in for a DINOv2 network: a 14 x 14 patch embedding at stride 14 (so sides must be
    multiples of 14), a 3 x 3 conv on the patch grid and logits resized to the input with
    align_corners, as V2's DPT head ends."""

    def __init__(self, classes=19):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Conv2d(3, 24, 14, 14), nn.Conv2d(24, classes, 3, padding=1)

    def forward(self, x):
        if x.shape[-2] % 14 or x.shape[-1] % 14:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not a multiple of the patch size 14")
        logits = self.head(F.gelu(self.embed(x)))
        return F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=True)


def test_unimatch_v2_resizes_whole_images_to_a_multiple_of_14():
    # the V2 configs come with the DINOv2 network (another branch); their eval section, set here
    cfg = load_config(os.path.join(ROOT, "configs", "voc_unimatch.yaml"), ["eval.mode=resize_unimatch_v2"])
    net = Patch14(21).eval()
    x = as_input(smooth_image(375, 500), cfg)
    theirs = unimatch_v2_classes(net, x, "original", 518, 21)
    assert_same_classes(seg_ssl_classes(cfg, net, 14, x), theirs)
    # padding to the multiple instead of resizing (seg_ssl's whole mode) scores other classes
    assert (seg_ssl_classes(cfg, net, 14, x, "mode=whole") != theirs).any()


@pytest.mark.parametrize("size, window", [
    ((144, 288), 112),  # 798 on 1024 x 2048 scaled down: windows of the same layout
    pytest.param((1024, 2048), 798, marks=pytest.mark.slow),
])
def test_unimatch_v2_cityscapes_windows_end_flush_and_sum_probabilities(size, window):
    cfg = load_config(os.path.join(ROOT, "configs", "cityscapes_unimatch.yaml"),
                      ["eval.mode=slide_unimatch_v2", f"eval.window={window}", "eval.stride=null"])
    net = Patch14(19).eval()
    x = as_input(smooth_image(*size), cfg)
    theirs = unimatch_v2_classes(net, x, "sliding_window", window, 19)
    assert_same_classes(seg_ssl_classes(cfg, net, 14, x), theirs)
    # windows from the origin (V1's) score other classes
    assert (seg_ssl_classes(cfg, net, 14, x, "mode=slide_unimatch") != theirs).any()
