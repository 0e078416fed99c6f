"""The releases' own DeepLabv3+ networks, so that a number trained here sits beside a published one.

smp's DeepLabV3Plus (separable decoder, one 3x3 fuse conv, torchvision 7x7 stem, every layer4 block
at dilation 2) is none of the networks the UniMatch, CPS and CAC papers trained. Each release's
network is built here from its own description: a timm ResNet (deep or 7x7 stem, dilated to the
output stride, layer4 multi-grid where the release has one) and the release's ASPP and decoder. The
module and key names follow the releases', so that ``seg_ssl.models.convert`` maps a released
checkpoint by renaming prefixes, and the releases' ImageNet backbone files load into ``encoder``
as they are.

    arch                     backbone (ResNet-50/101)               head
    deeplabv3plus_unimatch   deep stem 64-64-128                    ASPP (ReLU, pooled branch) + 48-ch reduce
                                                                    + 2 x 3x3 fuse
    deeplabv3plus_cps        deep stem 64-64-128, layer4 multi-grid own ASPP + decoder (see :class:`CPSHead`)
    deeplabv3plus_cac        torchvision 7x7 stem, layer4 multi-grid own ASPP + decoder (see :class:`CACHead`)

What every head returns is the 256-channel decoder feature map at stride 4; the classifier, the
projector and the upsampling to the input belong to :class:`seg_ssl.models.segmentor.Segmentor`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from seg_ssl.errors import ConfigError

RESNET_LAYERS = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}


class ResNetBackbone(nn.Module):
    """A ResNet-50/101 from timm, dilated to ``output_stride``, returning ``[c1, c4]`` (the maps at
    stride 4 and at the output stride: the only two a DeepLabv3+ decoder reads).

    ``stem="deep"`` is the three-3x3 stem of ResNet-v1c (64-64-128 channels; timm's ``stem_type=
    "deep"`` with ``stem_width=64``), ``"7x7"`` torchvision's. Dilation follows torchvision's
    ``replace_stride_with_dilation``: a dilated stage's first block keeps the previous dilation and
    the others take the new one (timm does the same). ``layer4_dilations`` (multi-grid) overrides
    each layer4 block's 3x3 dilation and padding, as the CPS and CAC releases do after building.
    Key names are torchvision's (``conv1.0``/``bn1``/``layer1.0.conv1`` ...), as in the releases'
    ImageNet files."""

    def __init__(self, encoder: str = "resnet50", stem: str = "deep", output_stride: int = 16,
                 layer4_dilations: list[int] | None = None, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        from timm.models.resnet import Bottleneck, ResNet  # here: a config check imports this module too
        if encoder not in RESNET_LAYERS:
            raise ConfigError(f"model.encoder = {encoder!r}: the releases' networks are built on "
                              f"{' or '.join(RESNET_LAYERS)}")
        net = ResNet(block=Bottleneck, layers=RESNET_LAYERS[encoder], output_stride=output_stride,
                     stem_width=64, stem_type="deep" if stem == "deep" else "", num_classes=0,
                     zero_init_last=False)
        self.conv1, self.bn1, self.act1, self.maxpool = net.conv1, net.bn1, net.act1, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if layer4_dilations is not None:
            if len(layer4_dilations) != len(self.layer4):
                raise ValueError(f"layer4_dilations = {layer4_dilations!r}: one dilation per layer4 block "
                                 f"({len(self.layer4)})")
            for block, d in zip(self.layer4, layer4_dilations, strict=True):
                block.conv2.dilation, block.conv2.padding = (d, d), (d, d)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = bn_eps, bn_momentum

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        return [c1, self.layer4(self.layer3(self.layer2(c1)))]


def conv_bn_act(cin: int, cout: int, k: int = 1, dilation: int = 1, act: nn.Module | None = None,
                bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> nn.Sequential:
    """conv (no bias, 'same' padding) -> BatchNorm -> activation (ReLU unless given)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k - 1) // 2, dilation=dilation,
                                   bias=False),
                         nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum),
                         act if act is not None else nn.ReLU(inplace=True))


class UniMatchASPP(nn.Module):
    """UniMatch's ASPP (``model/semseg/deeplabv3plus.py``): a 1x1 branch ``b0``, three full 3x3
    atrous branches ``b1-b3``, image pooling ``b4`` (pool -> 1x1 -> BN -> ReLU -> upsample) and a
    1x1 projection of the five; 256 channels (in_channels / 8) each, no dropout."""

    def __init__(self, in_channels: int, rates: list[int]):
        super().__init__()
        out = in_channels // 8
        self.b0 = conv_bn_act(in_channels, out)
        self.b1, self.b2, self.b3 = (conv_bn_act(in_channels, out, 3, r) for r in rates)
        self.b4 = nn.Module()
        self.b4.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_act(in_channels, out))
        self.project = conv_bn_act(5 * out, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.b4.gap(x), x.shape[-2:], mode="bilinear", align_corners=True)
        return self.project(torch.cat([self.b0(x), self.b1(x), self.b2(x), self.b3(x), pooled], 1))


class UniMatchHead(nn.Module):
    """UniMatch's decoder: ASPP on c4 (``head``), upsampled (align_corners) to c1, c1 reduced to 48
    channels (``reduce``), both concatenated and fused by two 3x3 convs with BN and ReLU (``fuse``)."""

    align_corners = True

    def __init__(self, rates: list[int], low_channels: int = 256, high_channels: int = 2048):
        super().__init__()
        self.head = UniMatchASPP(high_channels, rates)
        self.reduce = conv_bn_act(low_channels, 48)
        self.fuse = nn.Sequential(*conv_bn_act(high_channels // 8 + 48, 256, 3), *conv_bn_act(256, 256, 3))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        c1, c4 = maps
        c4 = F.interpolate(self.head(c4), size=c1.shape[-2:], mode="bilinear", align_corners=True)
        return self.fuse(torch.cat([self.reduce(c1), c4], 1))


class CPSASPP(nn.Module):
    """The CPS release's ASPP (``network.py``): four parallel convs (1x1 and three full 3x3 atrous,
    ``map_convs``) share one BatchNorm over their concatenation (``map_bn``), LeakyReLU (slope
    0.01), a 1x1 reduction (``red_conv``); the image-pooling branch (mean -> 1x1 -> BN -> LeakyReLU
    -> 1x1 ``pool_red_conv``) is *added*, not concatenated; then BN and LeakyReLU."""

    def __init__(self, in_channels: int, rates: list[int], hidden: int = 256, out: int = 256):
        super().__init__()
        self.map_convs = nn.ModuleList([nn.Conv2d(in_channels, hidden, 1, bias=False)] + [
            nn.Conv2d(in_channels, hidden, 3, padding=r, dilation=r, bias=False) for r in rates])
        self.map_bn = nn.BatchNorm2d(hidden * 4)
        self.global_pooling_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.global_pooling_bn = nn.BatchNorm2d(hidden)
        self.red_conv = nn.Conv2d(hidden * 4, out, 1, bias=False)
        self.pool_red_conv = nn.Conv2d(hidden, out, 1, bias=False)
        self.red_bn = nn.BatchNorm2d(out)
        self.act = nn.LeakyReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.red_conv(self.act(self.map_bn(torch.cat([conv(x) for conv in self.map_convs], 1))))
        pool = x.mean(dim=(2, 3), keepdim=True)
        pool = self.pool_red_conv(self.act(self.global_pooling_bn(self.global_pooling_conv(pool))))
        return self.act(self.red_bn(out + pool))  # the pooled map broadcasts over every position


class CPSHead(nn.Module):
    """The CPS release's decoder (``Head``): ASPP on c4 (``aspp``), c1 reduced to 48 channels
    (``reduce``), the ASPP map upsampled (align_corners) and concatenated *before* the reduced c1,
    then two 3x3 convs with BN and ReLU (``last_conv``)."""

    align_corners = True

    def __init__(self, rates: list[int], low_channels: int = 256, high_channels: int = 2048):
        super().__init__()
        self.aspp = CPSASPP(high_channels, rates)
        self.reduce = conv_bn_act(low_channels, 48)
        self.last_conv = nn.Sequential(*conv_bn_act(256 + 48, 256, 3), *conv_bn_act(256, 256, 3))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        c1, c4 = maps
        low = self.reduce(c1)
        high = F.interpolate(self.aspp(c4), size=c1.shape[-2:], mode="bilinear", align_corners=True)
        return self.last_conv(torch.cat([high, low], 1))


class CACASPPBranch(nn.Module):
    """One ASPP branch of the CAC release (``_ASPPModule``): conv -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int, rate: int):
        super().__init__()
        self.atrous_conv = nn.Conv2d(cin, cout, k, padding=0 if k == 1 else rate, dilation=rate, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class CACASPP(nn.Module):
    """The CAC release's ASPP (``models/modeling/aspp.py``, pytorch-deeplab-xception's): 1x1 and three
    3x3 atrous branches, image pooling, 1x1 projection 1280 -> 256 with BN and ReLU, then
    element-wise dropout 0.5."""

    def __init__(self, in_channels: int, rates: list[int], dropout: float = 0.5):
        super().__init__()
        self.aspp1 = CACASPPBranch(in_channels, 256, 1, 1)
        self.aspp2, self.aspp3, self.aspp4 = (CACASPPBranch(in_channels, 256, 3, r) for r in rates)
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                             nn.Conv2d(in_channels, 256, 1, bias=False),
                                             nn.BatchNorm2d(256), nn.ReLU())
        self.conv1 = nn.Conv2d(1280, 256, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(256)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4 = self.aspp4(x)
        pooled = F.interpolate(self.global_avg_pool(x), size=x4.shape[-2:], mode="bilinear",
                               align_corners=True)
        y = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), x4, pooled], 1)
        return self.dropout(self.relu(self.bn1(self.conv1(y))))


class CACHead(nn.Module):
    """The CAC release's decoder (``models/modeling/decoder.py``): c1 reduced to 48 channels
    (``conv1``/``bn1``), the ASPP map upsampled (align_corners) and concatenated before it, then
    3x3 conv, BN, ReLU, dropout 0.5, 3x3 conv, BN, ReLU (``last_conv``)."""

    align_corners = True

    def __init__(self, rates: list[int], low_channels: int = 256, high_channels: int = 2048,
                 aspp_dropout: float = 0.5, decoder_dropout: float = 0.5):
        super().__init__()
        self.aspp = CACASPP(high_channels, rates, aspp_dropout)
        self.conv1 = nn.Conv2d(low_channels, 48, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(48)
        self.relu = nn.ReLU()
        self.last_conv = nn.Sequential(*conv_bn_act(256 + 48, 256, 3, act=nn.ReLU()),
                                       nn.Dropout(decoder_dropout), *conv_bn_act(256, 256, 3, act=nn.ReLU()))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        c1, c4 = maps
        low = self.relu(self.bn1(self.conv1(c1)))
        high = F.interpolate(self.aspp(c4), size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.last_conv(torch.cat([high, low], 1))


# arch -> (stem, layer4 multi-grid (x the stage's dilation), head)
RELEASES = {
    "deeplabv3plus_unimatch": ("deep", None, UniMatchHead),
    "deeplabv3plus_cps": ("deep", [1, 2, 4], CPSHead),
    "deeplabv3plus_cac": ("7x7", [1, 2, 4], CACHead),
}


def build_release_network(arch: str, encoder: str, output_stride: int, aspp_rates: list[int] | None,
                          aspp_dropout: float = 0.0) -> tuple[ResNetBackbone, nn.Module]:
    """``(encoder, decoder)`` of a release's DeepLabv3+; the decoder returns 256 channels at stride 4.

    Multi-grid (CPS, CAC): layer4's blocks at 2, 4, 8 for output stride 16 (CPS's
    ``_nostride_dilate`` doubles per block; CAC's ``_make_MG_unit`` multiplies [1, 2, 4] by 2).
    At output stride 8 CAC dilates every layer3 block by 2 (its first one too, unlike torchvision)
    and layer4 by 4 x [1, 2, 4]; CPS's release has no stride 8."""
    stem, grid, head = RELEASES[arch]
    if arch == "deeplabv3plus_cps" and output_stride != 16:
        raise ConfigError(f"model.output_stride = {output_stride}: the CPS release's network "
                          f"({arch}) has output stride 16 only")
    rates = list(aspp_rates or ([6, 12, 18] if output_stride == 16 else [12, 24, 36]))
    layer4 = [g * (32 // output_stride) for g in grid] if grid else None
    backbone = ResNetBackbone(encoder, stem, output_stride, layer4)
    if arch == "deeplabv3plus_cac" and output_stride == 8:
        for block in backbone.layer3:
            block.conv2.dilation, block.conv2.padding = (2, 2), (2, 2)
    if arch == "deeplabv3plus_cac":
        return backbone, head(rates, aspp_dropout=aspp_dropout)
    if aspp_dropout:
        raise ConfigError(f"model.aspp_dropout = {aspp_dropout}: the {arch} release has no ASPP dropout")
    return backbone, head(rates)
