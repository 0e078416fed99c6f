import pytest
import torch
import torch.nn.functional as F
import torchvision

from seg_ssl.config import ConfigError
from seg_ssl.models.segmentor import Segmentor, logits_and_projection


@pytest.mark.parametrize("arch, depth, os_, stride, channels", [
    ("deeplabv3plus", 4, 16, 4, 32),
    ("deeplabv3plus", 5, 8, 4, 32),
    ("pspnet", 5, 8, 8, 512),
])
def test_features_logits_and_projections_have_each_architectures_strides(arch, depth, os_, stride, channels):
    torch.manual_seed(0)
    net = Segmentor(arch, "resnet18", num_classes=7, encoder_depth=depth, output_stride=os_,
                    decoder_channels=32, projector=True, proj_dim=16)
    x = torch.randn(2, 3, 64, 96)
    feats = net.features(x)
    assert feats.shape == (2, channels, 64 // stride, 96 // stride)
    assert net(x).shape == (2, 7, 64, 96)
    z = net.project(feats)
    assert z.shape == (2, 16, 64 // stride, 96 // stride)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 64 // stride, 96 // stride))
    if arch == "pspnet":  # the full dilated ResNet is used: layer4 gets gradients
        net(x).sum().backward()
        assert net.encoder.layer4[0].conv1.weight.grad is not None
    # any other size is zero-padded at the bottom/right to the output stride and cut back: the same
    # logits as the padded image's, on the input's pixels; features of ceil(side / stride) cells
    net.eval()
    odd = torch.randn(1, 3, 29, 35)
    with torch.no_grad():
        d = net.size_divisor
        padded = F.pad(odd, (0, -(-35 // d) * d - 35, 0, -(-29 // d) * d - 29))
        torch.testing.assert_close(net(odd), net(padded)[..., :29, :35])
        cells = (-(-29 // stride), -(-35 // stride))
        torch.testing.assert_close(net.features(odd), net.features(padded)[..., :cells[0], :cells[1]])
        assert net.features(odd).shape[-2:] == cells
        proj = net(odd, "proj")  # CAC's stride-8 maps: the whole 8-pixel blocks of the input
        assert proj["proj"].shape[-2:] == proj["pseudo_logits"].shape[-2:] == (29 // 8, 35 // 8)


def test_local_torchvision_weights_load_strictly(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    torch.nn.init.constant_(tv.layer1[0].conv1.weight, 0.5)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in tv.state_dict().items()}}, path)
    net = Segmentor("deeplabv3plus", "resnet18", num_classes=3, encoder_weights=str(path),
                    decoder_channels=32)
    assert torch.all(net.encoder.layer1[0].conv1.weight == 0.5)
    bad = {k: v for k, v in tv.state_dict().items() if not k.startswith("layer4")}
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"missing \d+ \(layer4.*unexpected 1 \(extra.weight\)"):
        Segmentor("deeplabv3plus", "resnet18", num_classes=3, encoder_weights=str(tmp_path / "bad.pth"))
    with pytest.raises(ConfigError, match="file not found"):
        Segmentor("deeplabv3plus", "resnet18", num_classes=3, encoder_weights=str(tmp_path / "none.pth"))


def test_grouped_forward_normalises_each_group_with_its_own_statistics():
    torch.manual_seed(0)
    net = Segmentor("deeplabv3plus", "resnet18", num_classes=3, encoder_depth=4, decoder_channels=16,
                    aspp_dropout=0.0, dropout=0.0, projector=True, proj_dim=8).train()
    a, b = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32) + 1.0
    grouped = net(torch.cat([a, b]), groups=[2, 3])
    torch.testing.assert_close(grouped, torch.cat([net(a), net(b)]))
    assert not torch.allclose(grouped, net(torch.cat([a, b])), atol=1e-3)  # one batch: shared statistics
    out = logits_and_projection(net, torch.cat([a, b]), groups=[2, 3])
    torch.testing.assert_close(out["proj"], torch.cat([logits_and_projection(net, a)["proj"],
                                                       logits_and_projection(net, b)["proj"]]))
