"""The releases' own networks (seg_ssl/models/release.py) and the checkpoint converter, against
the references of ``reference_releases.py``: the releases' state dicts as their code builds them
and their eval-mode forward written out functionally over those keys. If a layer, a dilation, a
padding, an interpolation mode, a concatenation order or a key mapping of seg_ssl's networks
changes, the logits differ."""
import os

import pytest
import torch

from conftest import ROOT
from helpers import load_tool
from reference_releases import random_release_state, release_logits, release_shapes
from seg_ssl.config import ConfigError, load_config
from seg_ssl.engine.checkpoint import load_checkpoint
from seg_ssl.engine.loading import load_for_eval
from seg_ssl.methods import build_method
from seg_ssl.models.convert import from_release, to_release
from seg_ssl.models.segmentor import Segmentor, build_segmentor

RELEASES = ("unimatch", "cps", "cac")
ARCH = {r: f"deeplabv3plus_{r}" for r in RELEASES}


def published(release: str, dataset: str = "voc"):
    return load_config(os.path.join(ROOT, "configs", f"{dataset}_{release}.yaml"))


def save_release_checkpoint(release: str, state: dict, path) -> None:
    """In the layout each release's training script writes (see seg_ssl/models/convert.py)."""
    if release == "unimatch":  # unimatch.py: {'model': DDP state_dict, 'optimizer', 'epoch', 'previous_best'}
        obj = {"model": {"module." + k: v for k, v in state.items()}, "optimizer": {}, "epoch": 3,
               "previous_best": 71.2}
    elif release == "cps":  # furnace engine.save_checkpoint: 'module.' stripped, both optimizers
        obj = {"model": state, "optimizer_l": {}, "optimizer_r": {}, "epoch": 1, "iteration": 5}
    else:  # CAC base_trainer._save_checkpoint: DDP state_dict under 'state_dict'
        obj = {"arch": "DistributedDataParallel", "epoch": 2,
               "state_dict": {"module." + k: v for k, v in state.items()}, "monitor_best": 0.7,
               "config": {"name": "CAC"}}
    torch.save(obj, path)


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("release", RELEASES)
def test_converted_checkpoint_gives_the_release_networks_logits(release, tmp_path):
    """A release checkpoint with random weights and BatchNorm statistics, converted by the tool and
    loaded as tools/eval.py loads it under the published config, gives the release network's
    eval-mode logits (odd input size: the networks take any size, as the releases evaluate)."""
    state = random_release_state(release)
    src, dst = tmp_path / "release.pth", tmp_path / "converted.pth"
    save_release_checkpoint(release, state, src)
    assert load_tool("convert_checkpoint").main(["--from", release, str(src), str(dst)]) == 0
    loaded = load_for_eval(published(release), str(dst))
    predict, divisor = loaded.predict, loaded.size_divisor
    x = torch.randn(2, 3, 67, 93, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = predict(x), release_logits(release, state, x)
    assert divisor == 1 and ours.shape == (2, 21, 67, 93)
    assert theirs.abs().max() > 0.1  # the check is not on vanishing logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())
    saved = load_checkpoint(str(dst))
    assert saved["config"]["model"]["arch"] == ARCH[release] and "optimizer" not in saved


@pytest.mark.parametrize("release", RELEASES)
def test_release_keys_round_trip_through_the_converter(release):
    shapes = release_shapes(release)
    state = {k: torch.zeros(s) for k, s in shapes.items()}
    cfg = published(release)
    model = build_method(cfg).build_model()
    converted = from_release(state, release)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    assert {k: tuple(v.shape) for k, v in to_release(own, release).items()} == shapes


def test_converter_names_what_does_not_fit(tmp_path):
    state = random_release_state("unimatch")
    state["aux_head.weight"] = torch.zeros(3)
    save_release_checkpoint("unimatch", state, tmp_path / "a.pth")
    tool = load_tool("convert_checkpoint")
    with pytest.raises(ConfigError, match=r"1 keys are not unimatch release keys \(aux_head.weight\)"):
        tool.main(["--from", "unimatch", str(tmp_path / "a.pth"), str(tmp_path / "b.pth")])
    del state["aux_head.weight"]
    state["fuse.0.weight"] = torch.zeros(256, 300, 3, 3)
    del state["reduce.1.running_var"]
    save_release_checkpoint("unimatch", state, tmp_path / "a.pth")
    with pytest.raises(ConfigError,
                       match=r"missing 1 \(decoder.reduce.1.running_var\).*wrong shape 1 "
                             r"\(decoder.fuse.0.weight\)"):
        tool.main(["--from", "unimatch", str(tmp_path / "a.pth"), str(tmp_path / "b.pth")])
    save_release_checkpoint("cac", random_release_state("cac", num_classes=5), tmp_path / "c.pth")
    with pytest.raises(ConfigError, match="5 classes, neither VOC's 21 nor Cityscapes' 19: give --config"):
        tool.main(["--from", "cac", str(tmp_path / "c.pth"), str(tmp_path / "d.pth")])
    assert not os.path.exists(tmp_path / "b.pth") and not os.path.exists(tmp_path / "d.pth")


# Parameter counts derived from each release's code (3x3 convs: 9 x in x out; 1x1: in x out; BN: 2 x C):
#  ResNet-50 deep stem (UniMatch model/backbone/resnet.py, CPS furnace resnet50 deep_stem=True stem_width=64):
#    stem 3*64*9 + 64*64*9 + 64*128*9 + BN 2*(64+64+128) = 112,576; layers as torchvision with layer1 from
#    128 channels (downsample 128*256 instead of 64*256) -> 23,631,808 in all;
#  ResNet-50 7x7 stem (CAC models/modeling/backbone/resnet.py = torchvision minus fc): 23,508,032.
#  ASPP 2048 -> 256 with rates 6/12/18: UniMatch (b0 1x1, b1-b3 3x3, b4 pool 1x1, each + BN; project
#    1280 -> 256 + BN)
#    = 524,288 + 3 x 4,718,592 + 524,288 + 327,680 + 5 x 512 + 512 = 15,535,104; CPS (map_convs 1x1 + 3 x 3x3,
#    map_bn 1024, global_pooling_conv 1x1 + BN, red_conv 1024 -> 256, pool_red_conv 256 -> 256, red_bn)
#    = 524,288 + 14,155,776 + 2,048 + 524,288 + 512 + 262,144 + 65,536 + 512 = 15,535,104 (the same count);
#    CAC (aspp1-4 + BN, global_avg_pool conv + BN, conv1 1280 -> 256 + bn1) = UniMatch's 15,535,104.
#  Decoder (all three): reduce 256 -> 48 + BN = 12,384; 3x3 304 -> 256 + BN = 700,928; 3x3 256 -> 256 + BN
#    = 590,336 -> 1,303,648. Classifier 256 x 21 + 21 = 5,397. CAC projector (model.py project)
#    256*256+256 + 256*128+128 = 98,688.
COUNTS = {
    "unimatch": {"encoder": 23_631_808, "decoder": 15_535_104 + 1_303_648, "classifier": 5_397},
    "cps": {"encoder": 23_631_808, "decoder": 15_535_104 + 1_303_648, "classifier": 5_397},
    "cac": {"encoder": 23_508_032, "decoder": 15_535_104 + 1_303_648, "classifier": 5_397,
            "projector": 98_688},
}
# resnet.py [F,F,T]; _nostride_dilate; _make_MG_unit
LAYER4 = {"unimatch": [1, 2, 2], "cps": [2, 4, 8], "cac": [2, 4, 8]}


@pytest.mark.parametrize("release", RELEASES)
def test_parameter_counts_dilations_and_output_stride(release):
    net = build_segmentor(published(release).model, 21, projector=release == "cac")
    counts = {name: sum(p.numel() for p in getattr(net, name).parameters()) for name in COUNTS[release]}
    assert counts == COUNTS[release]
    assert (net.projector is not None) == (release == "cac")
    assert [(b.conv2.dilation[0], b.conv2.padding[0], b.conv2.stride[0]) for b in net.encoder.layer4] == \
        [(d, d, 1) for d in LAYER4[release]]
    c1, c4 = net.encoder(torch.zeros(2, 3, 64, 96))
    assert c1.shape[-2:] == (16, 24) and c4.shape[-2:] == (4, 6)  # strides 4 and 16
    assert net.align_corners


@pytest.mark.parametrize("release, prefix, extra", [
    ("unimatch", "backbone.", {"fc.weight": (1000, 2048), "fc.bias": (1000,)}),   # pretrained/resnet50.pth
    ("cps", "branch1.backbone.", {}),                                            # resnet50_v1c.pth
    ("cac", "encoder.backbone.", {"fc.weight": (1000, 2048), "fc.bias": (1000,)}),  # torchvision resnet50
])
def test_release_imagenet_backbone_files_load_strictly(release, prefix, extra, tmp_path):
    """Files with the names, shapes and layout of the releases' ImageNet backbones load into the
    default network of each published config (model.encoder_weights); a missing tensor is named."""
    shapes = {k[len(prefix):]: s for k, s in release_shapes(release).items() if k.startswith(prefix)}
    shapes.update(extra)
    g = torch.Generator().manual_seed(3)
    state = {k: torch.randn(s, generator=g) if s else torch.tensor(0) for k, s in shapes.items()}
    torch.save(state, tmp_path / "imagenet.pth")
    m = published(release).model
    m.encoder_weights = str(tmp_path / "imagenet.pth")
    net = build_segmentor(m, 21)
    torch.testing.assert_close(net.encoder.layer4[2].conv2.weight, state["layer4.2.conv2.weight"])
    torch.testing.assert_close(net.encoder.bn1.running_var, state["bn1.running_var"])
    del state["layer3.0.bn2.weight"]
    torch.save(state, tmp_path / "imagenet.pth")
    with pytest.raises(ConfigError, match=r"missing 1 \(layer3.0.bn2.weight\)"):
        build_segmentor(m, 21)


def test_release_arch_needs_a_resnet():
    with pytest.raises(ConfigError, match="deeplabv3plus_cps is built on resnet50 or resnet101"):
        load_config(os.path.join(ROOT, "configs", "voc_cps.yaml"), ["model.encoder=resnet18"])
    with pytest.raises(ConfigError, match="has output stride 16 only"):
        Segmentor("deeplabv3plus_cps", "resnet50", 21, output_stride=8, aspp_dropout=0.0)
