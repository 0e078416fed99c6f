"""The UniMatch, CPS and CAC releases' networks as references: their state dicts as their code
builds them (``data/release_state_dicts.txt``: every key and shape), random weights under those
keys, and their eval-mode forward written out functionally from the releases' code over a state
dict in the release's own key names, independently of seg_ssl's networks."""
import os

import torch
import torch.nn.functional as F

from conftest import ROOT


def release_shapes(release: str) -> dict:
    shapes = {}
    with open(os.path.join(ROOT, "tests", "data", "release_state_dicts.txt")) as f:
        for line in f:
            if line.startswith(release + " "):
                _, key, shape = line.split()
                shapes[key] = () if shape == "-" else tuple(int(s) for s in shape.split(","))
    return shapes


def random_release_state(release: str, seed: int = 0, num_classes: int = 21) -> dict:
    """Random weights and random BatchNorm statistics under the release's keys, scaled so that
    activations stay of order one through 50 layers."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in release_shapes(release).items():
        if "classifier" in key and shape:
            shape = (num_classes, *shape[1:])
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean"):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1 and key.endswith(".weight"):  # BatchNorm scale
            state[key] = torch.rand(shape, generator=g) * 0.4 + 0.4
        elif len(shape) == 1:
            state[key] = torch.randn(shape, generator=g) * 0.1
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5
    return state


# ---------------------------------------------------------------------------------------------
# the releases' eval-mode forward, functional, over their own key names

def _bn(x, s, p):
    return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                        False, 0.0, 1e-5)


def _conv(x, s, p, stride=1, dilation=1):
    w = s[p + ".weight"]
    return F.conv2d(x, w, s.get(p + ".bias"), stride, dilation * (w.shape[-1] // 2), dilation)


def _resnet(x, s, p, deep_stem, layer4_dilations):
    """c1 (layer1) and c4 (layer4) of a ResNet-v1.5 (stride on the 3x3) at output stride 16."""
    if deep_stem:  # UniMatch resnet.py / furnace resnet.py: 3x3 s2 3->64, 64->64, 64->128
        x = F.relu(_bn(_conv(x, s, p + "conv1.0", 2), s, p + "conv1.1"))
        x = F.relu(_bn(_conv(x, s, p + "conv1.3"), s, p + "conv1.4"))
        x = _conv(x, s, p + "conv1.6")
    else:  # torchvision: 7x7 s2 pad 3
        x = _conv(x, s, p + "conv1", 2)
    x = F.max_pool2d(F.relu(_bn(x, s, p + "bn1")), 3, 2, 1)
    maps = []
    for layer, stride in ((1, 1), (2, 2), (3, 2), (4, 1)):  # layer4 dilated instead of strided: OS 16
        n = len({k.split(".")[0] for k in [k[len(f"{p}layer{layer}."):] for k in s
                                           if k.startswith(f"{p}layer{layer}.")]})
        for i in range(n):
            b = f"{p}layer{layer}.{i}"
            d = layer4_dilations[i] if layer == 4 else 1
            st = stride if i == 0 else 1
            out = F.relu(_bn(_conv(x, s, b + ".conv1"), s, b + ".bn1"))
            out = F.relu(_bn(_conv(out, s, b + ".conv2", st, d), s, b + ".bn2"))
            out = _bn(_conv(out, s, b + ".conv3"), s, b + ".bn3")
            short = (_bn(_conv(x, s, b + ".downsample.0", st), s, b + ".downsample.1")
                     if b + ".downsample.0.weight" in s else x)
            x = F.relu(out + short)
        maps.append(x)
    return maps[0], maps[3]


def _up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def release_logits(release: str, s: dict, x: torch.Tensor) -> torch.Tensor:
    if release == "unimatch":  # deeplabv3plus.py: ASPPModule b0-b4 + project, reduce, fuse, classifier
        c1, c4 = _resnet(x, s, "backbone.", True, [1, 2, 2])
        cbr = lambda t, p, d=1: F.relu(_bn(_conv(t, s, p + ".0", 1, d), s, p + ".1"))  # noqa: E731
        pooled = _up(F.relu(_bn(_conv(F.adaptive_avg_pool2d(c4, 1), s, "head.b4.gap.1"), s, "head.b4.gap.2")),
                     c4.shape[-2:])
        a = cbr(torch.cat([cbr(c4, "head.b0"), cbr(c4, "head.b1", 6), cbr(c4, "head.b2", 12),
                           cbr(c4, "head.b3", 18), pooled], 1), "head.project")
        f = torch.cat([cbr(c1, "reduce"), _up(a, c1.shape[-2:])], 1)
        f = F.relu(_bn(_conv(F.relu(_bn(_conv(f, s, "fuse.0"), s, "fuse.1")), s, "fuse.3"), s, "fuse.4"))
        return _up(_conv(f, s, "classifier"), x.shape[-2:])
    if release == "cps":  # network.py: SingleNetwork (branch1): ASPP with one BN, LeakyReLU, added pool
        p = "branch1."
        c1, c4 = _resnet(x, s, p + "backbone.", True, [2, 4, 8])
        q = p + "head.aspp."
        maps = torch.cat([_conv(c4, s, q + "map_convs.0")] + [_conv(c4, s, f"{q}map_convs.{i}", 1, r)
                                                              for i, r in ((1, 6), (2, 12), (3, 18))], 1)
        out = _conv(F.leaky_relu(_bn(maps, s, q + "map_bn")), s, q + "red_conv")
        pool = F.leaky_relu(_bn(_conv(c4.mean((2, 3), keepdim=True), s, q + "global_pooling_conv"), s,
                                q + "global_pooling_bn"))
        a = F.leaky_relu(_bn(out + _conv(pool, s, q + "pool_red_conv"), s, q + "red_bn"))
        low = F.relu(_bn(_conv(c1, s, p + "head.reduce.0"), s, p + "head.reduce.1"))
        f = torch.cat([_up(a, c1.shape[-2:]), low], 1)
        h = p + "head.last_conv."
        f = F.relu(_bn(_conv(F.relu(_bn(_conv(f, s, h + "0"), s, h + "1")), s, h + "3"), s, h + "4"))
        return _up(_conv(f, s, p + "classifier"), x.shape[-2:])
    # cac: models/modeling/{aspp,decoder}.py + model.py classifier (dropout is identity in eval)
    c1, c4 = _resnet(x, s, "encoder.backbone.", False, [2, 4, 8])
    q = "encoder.aspp."
    br = lambda i, d: F.relu(_bn(_conv(c4, s, f"{q}aspp{i}.atrous_conv", 1, d), s, f"{q}aspp{i}.bn"))  # noqa: E731
    pooled = _up(F.relu(_bn(_conv(F.adaptive_avg_pool2d(c4, 1), s, q + "global_avg_pool.1"),
                            s, q + "global_avg_pool.2")), c4.shape[-2:])
    a = F.relu(_bn(_conv(torch.cat([br(1, 1), br(2, 6), br(3, 12), br(4, 18), pooled], 1), s, q + "conv1"),
                   s, q + "bn1"))
    d = "encoder.decoder."
    low = F.relu(_bn(_conv(c1, s, d + "conv1"), s, d + "bn1"))
    f = torch.cat([_up(a, c1.shape[-2:]), low], 1)
    f = F.relu(_bn(_conv(F.relu(_bn(_conv(f, s, d + "last_conv.0"), s, d + "last_conv.1")), s,
                         d + "last_conv.4"), s, d + "last_conv.5"))
    return _up(_conv(f, s, "classifier.1"), x.shape[-2:])
