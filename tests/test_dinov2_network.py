"""UniMatch V2's network (seg_ssl/models/{dinov2,dpt}.py), its checkpoint converter and the official
DINOv2 weights.

The reference is written here from the release (LiheYoung/UniMatch-V2 ``model/backbone/dinov2.py``,
``model/semseg/dpt.py``, ``model/util/blocks.py``), independently of seg_ssl's modules: the release's
state-dict keys and shapes (:func:`release_shapes`), and its eval-mode forward as functions over a
state dict in the release's key names (:func:`release_logits`): explicit softmax attention, LayerScale,
the position embedding resampled by ``scale_factor=(g + 0.1) / 37``, the four taps through the final
LayerNorm, and the DPT head. A changed layer, tap, interpolation or key mapping changes the logits.
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from helpers import load_tool
from seg_ssl.config import ConfigError, load_config
from seg_ssl.engine.checkpoint import load_checkpoint
from seg_ssl.engine.loading import load_for_eval
from seg_ssl.models.convert import from_release, to_release
from seg_ssl.models.segmentor import Segmentor, build_segmentor, has_unused_parameters, logits_and_perturbed

SUP = os.path.join(ROOT, "configs", "voc_unimatch_v2_sup.yaml")
V2 = os.path.join(ROOT, "configs", "voc_unimatch_v2.yaml")
# dinov2.py vit_small/vit_base/vit_large (embed dim, depth, heads); dpt.py intermediate_layer_idx;
# unimatch_v2.py model_configs (features, out_channels)
RELEASE = {
    "dinov2_small": dict(dim=384, depth=12, heads=6, taps=[2, 5, 8, 11], features=64, out=[48, 96, 192, 384]),
    "dinov2_base": dict(dim=768, depth=12, heads=12, taps=[2, 5, 8, 11], features=128,
                        out=[96, 192, 384, 768]),
    "dinov2_large": dict(dim=1024, depth=24, heads=16, taps=[4, 11, 17, 23], features=256,
                         out=[256, 512, 1024, 1024]),
}


def release_shapes(size: str, num_classes: int = 21, depth: int | None = None) -> dict:
    """Every key and shape of the release's ``DPT`` state dict (img_size 518, patch 14, no registers)."""
    r = RELEASE[size]
    c, f, oc = r["dim"], r["features"], r["out"]
    s = {"backbone.cls_token": (1, 1, c), "backbone.pos_embed": (1, 1 + 37 * 37, c),
         "backbone.mask_token": (1, c), "backbone.patch_embed.proj.weight": (c, 3, 14, 14),
         "backbone.patch_embed.proj.bias": (c,)}
    for i in range(depth or r["depth"]):
        p = f"backbone.blocks.{i}."
        s.update({p + "norm1.weight": (c,), p + "norm1.bias": (c,), p + "attn.qkv.weight": (3 * c, c),
                  p + "attn.qkv.bias": (3 * c,), p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                  p + "ls1.gamma": (c,), p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                  p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                  p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,), p + "ls2.gamma": (c,)})
    s.update({"backbone.norm.weight": (c,), "backbone.norm.bias": (c,)})
    for i, o in enumerate(oc):
        s.update({f"head.projects.{i}.weight": (o, c, 1, 1), f"head.projects.{i}.bias": (o,),
                  f"head.scratch.layer{i + 1}_rn.weight": (f, o, 3, 3)})
    for i, k in ((0, 4), (1, 2), (3, 3)):  # ConvTranspose2d weights are (in, out, k, k); index 2 is Identity
        s.update({f"head.resize_layers.{i}.weight": (oc[i], oc[i], k, k),
                  f"head.resize_layers.{i}.bias": (oc[i],)})
    for n in range(1, 5):
        p = f"head.scratch.refinenet{n}."
        s.update({p + "out_conv.weight": (f, f, 1, 1), p + "out_conv.bias": (f,)})
        for u in (1, 2):
            for v in (1, 2):
                s.update({f"{p}resConfUnit{u}.conv{v}.weight": (f, f, 3, 3),
                          f"{p}resConfUnit{u}.conv{v}.bias": (f,)})
    o = "head.scratch.output_conv."
    s.update({o + "0.weight": (f, f, 3, 3), o + "0.bias": (f,), o + "2.weight": (num_classes, f, 1, 1),
              o + "2.bias": (num_classes,)})
    return s


def random_release_state(size: str, seed: int = 0, num_classes: int = 21, depth: int | None = None) -> dict:
    """Random weights under the release's keys: LayerScale gammas in [0.5, 1.5] (neither timm's 1e-5 nor
    the release's 1.0 start), norms near 1, weights scaled by fan-in so activations stay of order one."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in release_shapes(size, num_classes, depth).items():
        if key.endswith(".gamma"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif "norm" in key and key.endswith(".weight"):
            out[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(("_token", "pos_embed")):
            out[key] = torch.randn(shape, generator=g)
        elif len(shape) == 1:
            out[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            transposed = "resize_layers.0" in key or "resize_layers.1" in key  # (in, out, k, k), stride k
            fan_in = shape[0] if transposed else math.prod(shape[1:])
            out[key] = torch.randn(shape, generator=g) / fan_in ** 0.5
    return out


# ---------------------------------------------------------------------------------------------
# the release's eval-mode forward (DPT.forward without comp_drop), functional, over its own keys

def _layer_norm(x, s, p):
    return F.layer_norm(x, x.shape[-1:], s[p + ".weight"], s[p + ".bias"], 1e-6)


def _linear(x, s, p):
    return F.linear(x, s[p + ".weight"], s[p + ".bias"])


def _pos_encoding(s, x_img, tokens):
    """dinov2.py interpolate_pos_encoding(x, w, h) with ``B, nc, w, h = x.shape``: ``w`` is the height."""
    pos = s["backbone.pos_embed"]
    npatch, n = tokens.shape[1] - 1, pos.shape[1] - 1
    w, h = x_img.shape[2], x_img.shape[3]
    if npatch == n and w == h:
        return pos
    dim = tokens.shape[-1]
    w0, h0 = w // 14 + 0.1, h // 14 + 0.1
    sqrt_n = math.sqrt(n)
    patch = F.interpolate(pos[:, 1:].reshape(1, int(sqrt_n), int(sqrt_n), dim).permute(0, 3, 1, 2),
                          scale_factor=(w0 / sqrt_n, h0 / sqrt_n), mode="bicubic", antialias=False)
    assert (int(w0), int(h0)) == tuple(patch.shape[-2:])
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def _attention(x, s, p, heads):
    """dinov2_layers Attention without xFormers: softmax(q k^T / sqrt(d)) v, the matrix materialised."""
    b, n, c = x.shape
    qkv = _linear(x, s, p + ".qkv").reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    return _linear((attn @ v).transpose(1, 2).reshape(b, n, c), s, p + ".proj")


def release_features(s, x, size, taps=None):
    """``get_intermediate_layers(x, taps)``: final LayerNorm on each tap, class token dropped."""
    r = RELEASE[size]
    taps = taps or r["taps"]
    t = F.conv2d(x, s["backbone.patch_embed.proj.weight"], s["backbone.patch_embed.proj.bias"], stride=14)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([s["backbone.cls_token"].expand(t.shape[0], -1, -1), t], dim=1)
    t = t + _pos_encoding(s, x, t)
    out = []
    for i in range(max(taps) + 1):
        p = f"backbone.blocks.{i}."
        t = t + s[p + "ls1.gamma"] * _attention(_layer_norm(t, s, p + "norm1"), s, p + "attn", r["heads"])
        hidden = F.gelu(_linear(_layer_norm(t, s, p + "norm2"), s, p + "mlp.fc1"))
        t = t + s[p + "ls2.gamma"] * _linear(hidden, s, p + "mlp.fc2")
        out += [_layer_norm(t, s, "backbone.norm")[:, 1:]] * taps.count(i)
    return out


def _conv(x, s, p, stride=1, padding=0):
    return F.conv2d(x, s[p + ".weight"], s.get(p + ".bias"), stride, padding)


def _rcu(x, s, p):  # blocks.py ResidualConvUnit, bn=False, ReLU(False)
    return x + _conv(F.relu(_conv(F.relu(x), s, p + ".conv1", padding=1)), s, p + ".conv2", padding=1)


def _fusion(s, p, x, lateral=None, size=None):  # blocks.py FeatureFusionBlock
    if lateral is not None:
        x = x + _rcu(lateral, s, p + ".resConfUnit1")
    x = _rcu(x, s, p + ".resConfUnit2")
    x = F.interpolate(x, **({"size": size} if size is not None else {"scale_factor": 2}), mode="bilinear",
                      align_corners=True)
    return _conv(x, s, p + ".out_conv")


def release_logits(s, x, size, taps=None):
    ph, pw = x.shape[-2] // 14, x.shape[-1] // 14
    layers = []
    for i, feat in enumerate(release_features(s, x, size, taps)):
        feat = feat.permute(0, 2, 1).reshape(feat.shape[0], feat.shape[-1], ph, pw)
        feat = _conv(feat, s, f"head.projects.{i}")
        w, b = s.get(f"head.resize_layers.{i}.weight"), s.get(f"head.resize_layers.{i}.bias")
        if i < 2:  # ConvTranspose2d k4 s4, k2 s2; Identity; Conv2d 3x3 s2 p1
            feat = F.conv_transpose2d(feat, w, b, stride=4 if i == 0 else 2)
        elif i == 3:
            feat = F.conv2d(feat, w, b, stride=2, padding=1)
        layers.append(_conv(feat, s, f"head.scratch.layer{i + 1}_rn", padding=1))
    l1, l2, l3, l4 = layers
    sc = "head.scratch."
    path = _fusion(s, sc + "refinenet4", l4, size=l3.shape[2:])
    path = _fusion(s, sc + "refinenet3", path, l3, size=l2.shape[2:])
    path = _fusion(s, sc + "refinenet2", path, l2, size=l1.shape[2:])
    path = _fusion(s, sc + "refinenet1", path, l1)
    out = _conv(F.relu(_conv(path, s, sc + "output_conv.0", padding=1)), s, sc + "output_conv.2")
    return F.interpolate(out, (ph * 14, pw * 14), mode="bilinear", align_corners=True)


def save_v2_checkpoint(path, ema: dict, student: dict | None = None, labeled_only: bool = False) -> None:
    """unimatch_v2.py:265-277: both models DDP-wrapped ('module.'); supervised.py: 'model' only."""
    ddp = lambda st: {"module." + k: v for k, v in st.items()}  # noqa: E731
    obj = {"model": ddp(student if student is not None else ema), "optimizer": {}, "epoch": 3,
           "previous_best": 61.5}
    if not labeled_only:
        obj.update({"model_ema": ddp(ema), "previous_best_ema": 62.0, "best_epoch": 2, "best_epoch_ema": 3})
    torch.save(obj, path)


def sup_config(*overrides):
    return load_config(SUP, list(overrides))


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["dinov2_small", pytest.param("dinov2_base", marks=pytest.mark.slow)])
def test_converted_v2_checkpoint_gives_the_release_networks_logits(size, tmp_path):
    """A V2 checkpoint (random weights, the release's keys incl. mask_token) converted by the tool and
    loaded as tools/eval.py loads it gives the release network's eval-mode logits to 1e-5 relative,
    on the 37x37 pre-training grid (518 x 518: pos_embed as stored) and on a non-square one (266 x 392:
    19 x 28, resampled). Both in float32 as the release runs (fused attention against explicit
    softmax: ~1e-6 apart; each is ~8e-6 from a float64 forward, in the same direction)."""
    state = random_release_state(size)
    src, dst = tmp_path / "latest.pth", tmp_path / "converted.pth"
    save_v2_checkpoint(src, state, student={k: v + 1 for k, v in state.items()})
    over = [f"model.encoder={size}"]
    tool = load_tool("convert_checkpoint")
    # voc_unimatch_v2.yaml: 21 classes
    assert tool.main(["--from", "unimatch_v2", str(src), str(dst), *over]) == 0
    os.remove(src)
    loaded = load_for_eval(load_config(V2, over), str(dst))  # eval.model=ema, as the published config
    predict, divisor = loaded.predict, loaded.size_divisor
    saved = load_checkpoint(str(dst))
    os.remove(dst)
    assert divisor == 14 and saved["converted_from"]["weights"] == "ema" and "optimizer" not in saved
    model = saved["config"]["model"]
    assert (model["arch"], model["encoder"]) == ("dpt_unimatch_v2", size)
    for hw in ((518, 518), (266, 392)):
        x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ours, theirs = predict(x), release_logits(state, x, size)
        assert ours.shape == (1, 21, *hw)
        assert theirs.abs().max() > 0.1  # the check is not on vanishing logits
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())


def test_v2_keys_round_trip_through_the_converter():
    """The release's keys (less mask_token, dropped by its rule) rename onto seg_ssl's network key for
    key and shape, for every size; back again they are the release's."""
    for size in RELEASE:
        shapes = release_shapes(size)
        with torch.device("meta"):
            model = Segmentor("dpt_unimatch_v2", size, 21, dropout=0.0)
        converted = from_release({k: torch.empty(s, device="meta") for k, s in shapes.items()}, "unimatch_v2")
        own = model.state_dict()
        assert set(converted) == set(own), size
        assert all(converted[k].shape == own[k].shape for k in own), size
        back = {k: tuple(v.shape) for k, v in to_release(own, "unimatch_v2").items()}
        assert back == {k: s for k, s in shapes.items() if k != "backbone.mask_token"}


def _vit_params(c: int, depth: int) -> int:
    # patch_embed 14x14x3 conv + bias, cls_token, pos_embed 1370 x C, norm; per block: qkv 3C^2 + 3C,
    # proj C^2 + C, fc1 4C^2 + 4C, fc2 4C^2 + C, two LayerNorms 4C, two LayerScales 2C
    return 588 * c + c + c + 1370 * c + 2 * c + depth * (12 * c * c + 15 * c)


def _dpt_params(c: int, f: int, oc: list, classes: int) -> int:
    projects = sum(c * o + o for o in oc)
    resize = oc[0] ** 2 * 16 + oc[0] + oc[1] ** 2 * 4 + oc[1] + oc[3] ** 2 * 9 + oc[3]
    layer_rn = sum(9 * o * f for o in oc)
    refinenets = 4 * ((f * f + f) + 4 * (9 * f * f + f))  # out_conv + 2 residual units x 2 convs
    output_conv = 9 * f * f + f + f * classes + classes
    return projects + resize + layer_rn + refinenets + output_conv


@pytest.mark.parametrize("size, logged", [("dinov2_small", "24.8"), ("dinov2_base", "97.5"),
                                          ("dinov2_large", "335.6")])
def test_parameter_counts_equal_the_release_logs(size, logged):
    """Count rule: the release logs ``count_params(model)`` = every parameter of ``DPT`` / 1e6 with one
    decimal ("Total params: 24.8M", training-logs/table01-*_dinov2_small.log; 97.5M base, 335.6M large,
    table08); its model also holds ``backbone.mask_token`` (C values), which seg_ssl's does not. With two
    decimals: 24.80M, 97.53M, 335.58M (the issue's figures)."""
    r = RELEASE[size]
    with torch.device("meta"):  # the architecture only: no memory, no initialisation
        net = Segmentor("dpt_unimatch_v2", size, 21, dropout=0.0)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(net.encoder) == _vit_params(r["dim"], r["depth"])
    assert count(net.decoder) + count(net.classifier) == _dpt_params(r["dim"], r["features"], r["out"], 21)
    release_total = count(net) + r["dim"]  # + mask_token
    assert f"{release_total / 1e6:.1f}" == logged
    assert f"{release_total / 1e6:.2f}" == {"dinov2_small": "24.80", "dinov2_base": "97.53",
                                            "dinov2_large": "335.58"}[size]


def test_position_embedding_is_the_releases_resampling_not_timms():
    """Bicubic at scale (g + 0.1) / 37 without antialias, as the release; the stored table at 37x37.
    timm's own resampling (by size, antialiased) gives other values at other grids."""
    from timm.layers import resample_abs_pos_embed
    net = Segmentor("dpt_unimatch_v2", "dinov2_small", 21, dropout=0.0, vit_blocks=1)
    with torch.no_grad():
        net.encoder.pos_embed.copy_(torch.randn(1, 1370, 384, generator=torch.Generator().manual_seed(0)))
    s = {"backbone.pos_embed": net.encoder.pos_embed.detach()}
    for gh, gw in ((37, 37), (19, 28), (57, 57), (4, 4), (40, 37)):
        x, tokens = torch.zeros(1, 3, 14 * gh, 14 * gw), torch.zeros(1, 1 + gh * gw, 384)
        ours = net.encoder.position_embedding(gh, gw).detach()
        torch.testing.assert_close(ours, _pos_encoding(s, x, tokens), rtol=0, atol=1e-6)
        if (gh, gw) != (37, 37):
            timms = resample_abs_pos_embed(s["backbone.pos_embed"], (gh, gw), (37, 37), num_prefix_tokens=1)
            assert (ours - timms).abs().max() > 0.01
    assert net.encoder.position_embedding(37, 37) is net.encoder.pos_embed


def test_attention_is_fused(monkeypatch):
    """Every block attends through F.scaled_dot_product_attention (timm's fused path); nothing
    computes a softmax over a tokens x tokens matrix."""
    for size in RELEASE:
        with torch.device("meta"):
            full = Segmentor("dpt_unimatch_v2", size, 21, dropout=0.0)
        assert len(full.encoder.blocks) == RELEASE[size]["depth"]
        assert all(block.attn.fused_attn for block in full.encoder.blocks)
    net = Segmentor("dpt_unimatch_v2", "dinov2_small", 21, dropout=0.0, vit_blocks=3)
    calls, softmaxes = [], []
    sdpa, softmax = F.scaled_dot_product_attention, torch.Tensor.softmax
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: calls.append(q.shape) or sdpa(q, k, v, **kw))
    monkeypatch.setattr(torch.Tensor, "softmax",
                        lambda t, *a, **kw: softmaxes.append(t.shape) or softmax(t, *a, **kw))
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, 56, 70))
    assert calls == [(1, 6, 1 + 4 * 5, 64)] * 3 and not softmaxes


def test_taps_and_the_tiny_variant():
    """Full depth: the release's taps; N blocks: blocks 0..N-1 tapped at round((k+1)N/4)-1. Every map
    is NCHW at 1/14 of the input; the taps equal the release's features on the same weights."""
    from seg_ssl.models.dinov2 import tap_indices
    assert tap_indices("dinov2_small", None) == tap_indices("dinov2_base", 12) == (2, 5, 8, 11)
    assert tap_indices("dinov2_large", None) == (4, 11, 17, 23)
    assert [tap_indices("dinov2_small", n) for n in (1, 2, 3, 4, 6)] == [
        (0, 0, 0, 0), (0, 0, 1, 1), (0, 1, 1, 2), (0, 1, 2, 3), (1, 2, 4, 5)]
    net = Segmentor("dpt_unimatch_v2", "dinov2_small", 21, dropout=0.0, vit_blocks=2)
    assert len(net.encoder.blocks) == 2 and "encoder.blocks.2.norm1.weight" not in net.state_dict()
    release = random_release_state("dinov2_small", depth=2)
    net.load_state_dict(from_release({k: v for k, v in release.items()}, "unimatch_v2"))
    x = torch.randn(2, 3, 56, 84, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        maps = net.encoder(x)
        ref = release_features(release, x, "dinov2_small", taps=[0, 0, 1, 1])
        logits, ref_logits = net.eval()(x), release_logits(release, x, "dinov2_small", taps=[0, 0, 1, 1])
    assert [m.shape for m in maps] == [(2, 384, 4, 6)] * 4
    for m, r in zip(maps, ref, strict=True):
        torch.testing.assert_close(m, r.permute(0, 2, 1).reshape(m.shape), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4 * ref_logits.abs().max().item())


def test_tiny_network_trains_a_step_and_tells_ddp_of_its_unused_parameters():
    """A 2-block DINOv2-S at crop 56 takes an AdamW step; every parameter gets a gradient except the
    deepest fusion block's resConfUnit1 (kept for the release's keys), which is why the model says
    ``has_unused_parameters`` (CPS's two networks too)."""
    from seg_ssl.methods.cps import TwoBranch
    torch.manual_seed(0)
    net = Segmentor("dpt_unimatch_v2", "dinov2_small", 21, dropout=0.0, vit_blocks=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(2, 3, 56, 56), torch.randint(0, 21, (2, 56, 56))
    F.cross_entropy(net(x), y).backward()
    opt.step()
    idle = sorted(n for n, p in net.named_parameters() if p.grad is None)
    unit = "decoder.scratch.refinenet4.resConfUnit1."
    assert idle == [f"{unit}conv{i}.{w}" for i in (1, 2) for w in ("bias", "weight")]
    assert all(not torch.equal(before[n], p) for n, p in net.named_parameters() if n not in idle)
    assert has_unused_parameters(net) and has_unused_parameters(TwoBranch(net, net))
    assert not has_unused_parameters(Segmentor("deeplabv3plus", "resnet18", 3, encoder_depth=3))


def test_trainer_builds_ddp_with_find_unused_parameters(monkeypatch):
    """The trainer's DDP wrapper gets find_unused_parameters for this network although the method
    (labeled-only) does not ask for it."""
    from types import SimpleNamespace

    from seg_ssl.engine import trainer as trainer_module
    from seg_ssl.methods import build_method
    seen = {}
    monkeypatch.setattr(trainer_module, "DistributedDataParallel",
                        lambda model, **kw: seen.update(kw) or model)
    cfg = sup_config("model.vit_blocks=1", "train.sync_bn=false")
    method = build_method(cfg)
    fake = SimpleNamespace(cfg=cfg, info=SimpleNamespace(world_size=1, distributed=True, local_rank=0),
                           device=torch.device("cpu"), method=method)
    trainer_module.Trainer._build_model(fake)
    assert method.find_unused_parameters is False and seen["find_unused_parameters"] is True


def test_inputs_are_padded_to_whole_patches_and_the_logits_cut_back():
    """Sides that are not multiples of the patch (14) are padded with the mean colour at the bottom
    and right, as every Segmentor pads to its divisor, and the logits are cut back to the input."""
    from seg_ssl.evaluation.inference import infer_whole
    net = Segmentor("dpt_unimatch_v2", "dinov2_small", 21, dropout=0.0, vit_blocks=1).eval()
    assert net.size_divisor == 14
    x = torch.randn(1, 3, 50, 61)
    with torch.no_grad():
        out, padded = net(x), net(torch.nn.functional.pad(x, (0, 9, 0, 6)))
        assert out.shape == (1, 21, 50, 61)
        torch.testing.assert_close(out, padded[..., :50, :61])
        torch.testing.assert_close(infer_whole(net, x, 14), out)


def test_unimatch_feature_perturbation_drops_every_tapped_map():
    """UniMatch V1's fp stream works on this network unchanged: at p = 0 the perturbed logits are the
    clean ones; at p = 1 every one of the four maps is zeroed, so they are the head's on zero maps."""
    torch.manual_seed(0)
    net = Segmentor("dpt_unimatch_v2", "dinov2_small", 5, dropout=0.0, vit_blocks=2).eval()
    x = torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        p0, p1 = logits_and_perturbed(net, x, 0.0), logits_and_perturbed(net, x, 1.0)
        zeros = [torch.zeros_like(m) for m in net.encoder(x)]
        on_zeros = F.interpolate(net.classifier(net.decoder(zeros)), size=(42, 56), mode="bilinear",
                                 align_corners=True)
    torch.testing.assert_close(p0["logits_fp"], p0["logits"])
    torch.testing.assert_close(p1["logits_fp"], on_zeros)
    torch.testing.assert_close(p1["logits"], net(x))


def _official_file(path, size="dinov2_small", seed=0):
    """A file in the layout of dinov2_vit{s,b,l}14_pretrain.pth (the release's backbone keys, no prefix)."""
    release = random_release_state(size, seed)
    state = {k[len("backbone."):]: v for k, v in release.items() if k.startswith("backbone.")}
    torch.save(state, path)
    return state


def test_official_dinov2_weights_load_strictly_without_mask_token(tmp_path):
    """model.encoder_weights names an official-layout file: it loads strictly, mask_token dropped by its
    rule; another size's file, missing or unexpected keys and a missing file are one line naming it."""
    from seg_ssl.models.dinov2 import load_dinov2_weights
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    state = _official_file(path)
    net = build_segmentor(sup_config(f"model.encoder_weights={path}").model, 21)
    own = net.encoder.state_dict()
    assert set(state) - set(own) == {"mask_token"}
    assert all(torch.equal(own[k], state[k]) for k in own)
    # the wrong size: a base file (pos_embed and cls_token suffice to say so) for a small model
    torch.save({"cls_token": torch.zeros(1, 1, 768), "pos_embed": torch.zeros(1, 1370, 768)},
               tmp_path / "b.pth")
    with pytest.raises(ConfigError, match=r"b.pth holds dinov2_base weights \(embed dim 768\); "
                                          r"model.encoder is dinov2_small \(embed dim 384\)"):
        load_dinov2_weights(net.encoder, str(tmp_path / "b.pth"))
    del state["blocks.3.ls1.gamma"]
    state["head.weight"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"dinov2_vits14_pretrain.pth: .*missing 1 \(blocks.3.ls1.gamma\), "
                                          r"unexpected 1 \(head.weight\)"):
        load_dinov2_weights(net.encoder, str(path))
    os.remove(path)
    with pytest.raises(ConfigError, match="model.encoder_weights: file not found: .*vits14_pretrain.pth"):
        load_dinov2_weights(net.encoder, str(path))


def test_config_checks_name_what_does_not_fit(tmp_path):
    cases = [
        (["model.vit_blocks=2", f"model.encoder_weights={tmp_path / 'w.pth'}"],
         "pretrained DINOv2 weights need the whole ViT"),
        (["model.vit_blocks=13"], "model.vit_blocks = 13: dinov2_small has 1 to 12 blocks"),
        (["model.encoder=resnet50"], "dpt_unimatch_v2 is built on dinov2_small, dinov2_base, dinov2_large"),
        (["model.encoder_weights=imagenet"], "loads the official DINOv2 file from a local path"),
        (["model.arch=deeplabv3plus"], "'dinov2_small' is a DINOv2 ViT: use it with model.arch=dpt_unimatch"),
        (["model.arch=deeplabv3plus", "model.encoder=resnet18", "model.vit_blocks=2"],
         "vit_blocks = 2 is for model.arch"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            sup_config(*overrides)
    with pytest.raises(ConfigError, match="model.dropout = 0.1: the UniMatch V2 release's classifier has no"):
        build_segmentor(sup_config("model.dropout=0.1", "model.vit_blocks=1").model, 21)


def test_cac_sees_the_heads_finest_features_at_the_centre_of_each_stride_8_cell():
    """The DPT head's features (stride 1.75, 8x the token grid, covering the input exactly) are
    sampled at the centres of CAC's 8x8-pixel cells: a feature map equal to each position's pixel
    x coordinate gives 4, 12, 20, ... ; the projector's embeddings and pseudo logits are on that grid."""
    from seg_ssl.models.segmentor import logits_and_projection
    net = build_segmentor(sup_config("model.vit_blocks=1").model, 21, projector=True)
    x_coord = (torch.arange(32.0) * 1.75 + 0.875).view(1, 1, 1, 32).expand(1, 1, 32, 32)  # 56 px, 32 features
    cells = net.at_stride_8(x_coord, 56, 56)
    assert cells.shape == (1, 1, 7, 7)
    torch.testing.assert_close(cells[0, 0], torch.arange(4.0, 56, 8).expand(7, 7))
    out = logits_and_projection(net, torch.randn(2, 3, 56, 70))
    assert out["proj"].shape == (2, 128, 7, 8) and out["pseudo_logits"].shape == (2, 21, 7, 8)


def test_converter_takes_ema_or_student_and_names_what_does_not_fit(tmp_path):
    tool = load_tool("convert_checkpoint")
    ema = random_release_state("dinov2_small", seed=3, depth=1)
    student = {k: v * 2 for k, v in ema.items()}
    src, dst = tmp_path / "latest.pth", tmp_path / "out.pth"
    save_v2_checkpoint(src, ema, student)
    args = ["--from", "unimatch_v2", str(src), str(dst), "--config", SUP, "model.vit_blocks=1"]
    for flag, want in (([], ema), (["--student"], student)):
        assert tool.main(args + flag) == 0
        weights = load_checkpoint(str(dst))["model"]
        assert torch.equal(weights["classifier.2.weight"], want["head.scratch.output_conv.2.weight"])
        assert torch.equal(weights["encoder.blocks.0.ls2.gamma"], want["backbone.blocks.0.ls2.gamma"])
        assert torch.equal(weights["decoder.scratch.refinenet4.resConfUnit1.conv1.weight"],
                           want["head.scratch.refinenet4.resConfUnit1.conv1.weight"])
        saved = load_checkpoint(str(dst))  # the file says whose weights it holds; its config scores them
        assert saved["weights"] == saved["config"]["eval"]["model"] == ("student" if flag else "ema")
    # the student's weights under a config that scores the EMA: one line saying what to set
    from seg_ssl.errors import CheckpointError
    with pytest.raises(CheckpointError,
                       match=r"out.pth holds no ema weights \(eval.model=ema\); its model is "
                             r"the student's: set eval.model=student"):
        load_for_eval(load_config(V2, ["model.vit_blocks=1"]), str(dst))
    # supervised.py's checkpoint has no EMA: said, and --student converts it
    save_v2_checkpoint(src, ema, labeled_only=True)
    with pytest.raises(ConfigError, match=r"no model_ema \(EMA weights\), only model .*--student converts"):
        tool.main(args)
    assert tool.main(args + ["--student"]) == 0
    # a bare state dict, with module. or not
    torch.save(ema, src)
    assert tool.main(args) == 0
    # a key no rule covers is named, not dropped
    save_v2_checkpoint(src, {**ema, "aux_head.weight": torch.zeros(3)})
    with pytest.raises(ConfigError, match=r"1 keys are not unimatch_v2 release keys \(aux_head.weight\)"):
        tool.main(args)
    # a base checkpoint with a small config: the override to add is named before anything is built
    base = {"backbone.pos_embed": torch.zeros(1, 1370, 768),
            "head.scratch.output_conv.2.weight": torch.zeros(21, 128, 1, 1)}
    save_v2_checkpoint(src, base)
    with pytest.raises(ConfigError, match="holds dinov2_base weights; .* add model.encoder=dinov2_base"):
        tool.main(args)
    with pytest.raises(ConfigError, match="--student: a unimatch checkpoint holds one model"):
        tool.main(["--from", "unimatch", str(src), str(dst), "--student"])


def test_cityscapes_twin_trains_with_the_releases_ohem():
    """configs/cityscapes_unimatch_v2_sup.yaml's labeled loss is OHEM (the release's criterion,
    supervised.py): the mean CE of the hard pixels, at least min_kept per image; VOC's is plain CE."""
    from seg_ssl.losses.ohem import ohem_cross_entropy
    from seg_ssl.methods import build_method
    g = torch.Generator().manual_seed(0)
    labeled = {"image": torch.zeros(2, 3, 14, 14), "label": torch.randint(0, 19, (2, 14, 14), generator=g)}
    easy = torch.rand(2, 1, 14, 14, generator=g) < 0.5  # half the pixels confidently right
    right = F.one_hot(labeled["label"], 19).permute(0, 3, 1, 2)
    logits = torch.randn(2, 19, 14, 14, generator=g) + 10 * easy * right
    city = os.path.join(ROOT, "configs", "cityscapes_unimatch_v2_sup.yaml")
    method = build_method(load_config(city, ["model.vit_blocks=1", "train.ohem_min_kept=20"]))
    loss = method.training_step(lambda x: logits, labeled, None, 0)["loss"]
    torch.testing.assert_close(loss, ohem_cross_entropy(logits, labeled["label"], 0.7, 40))
    plain = F.cross_entropy(logits, labeled["label"])
    assert loss > 1.5 * plain  # the hard pixels only
    voc = build_method(sup_config("model.vit_blocks=1"))
    torch.testing.assert_close(voc.training_step(lambda x: logits, labeled, None, 0)["loss"], plain)
