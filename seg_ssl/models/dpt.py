"""The UniMatch V2 release's DPT head (LiheYoung/UniMatch-V2 ``model/semseg/dpt.py`` ``DPTHead``,
``model/util/blocks.py``), module for module under the release's names, so that a V2 checkpoint's
``head.*`` keys load by a prefix rename.

From the four tapped ViT maps (B, C, g, g'), each level is projected (1x1, ``projects``) and brought
to its own scale (``resize_layers``: transposed conv x4, transposed conv x2, identity, 3x3 conv
stride 2), mapped to ``features`` channels (3x3, no bias, ``scratch.layerN_rn``) and fused from the
coarsest up (``scratch.refinenetN``), each fusion resized to the next level's exact size and the
finest doubled: the result is ``features`` channels at 8x the token grid (stride 14/8 = 1.75 in
pixels). No normalisation anywhere (``use_bn=False``), ReLUs not in place, ``align_corners=True``.

The release's ``scratch.output_conv`` (3x3 conv, ReLU, 1x1 to the classes) is the Segmentor's
classifier (:func:`dpt_classifier`); this module returns the fused features it reads.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))``, 3x3 convs with bias (blocks.py ``ResidualConvUnit``,
    bn=False)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """blocks.py ``FeatureFusionBlock``: the coarser path plus ``resConfUnit1`` of the lateral map
    (when there is one), ``resConfUnit2``, bilinear resize (to ``size``, else x2), 1x1 ``out_conv``.
    The deepest block has no lateral input, so its ``resConfUnit1`` never runs; it is kept because
    the release's checkpoints hold it (its parameters get no gradient: DDP is told, see
    ``Segmentor.has_unused_parameters``)."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, lateral: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if lateral is not None:
            x = x + self.resConfUnit1(lateral)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, size=size, scale_factor=None if size is not None else 2, mode="bilinear",
                          align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """The release's ``DPTHead`` without its ``output_conv``: four tapped maps in, ``features``
    channels at 8x their grid out."""

    align_corners = True

    def __init__(self, embed_dim: int, features: int, out_channels: tuple[int, int, int, int]):
        super().__init__()
        c = out_channels
        self.projects = nn.ModuleList([nn.Conv2d(embed_dim, ci, 1) for ci in c])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = nn.Module()
        for i, ci in enumerate(c, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(ci, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FeatureFusionBlock(features))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        s = self.scratch
        layer_rn = (s.layer1_rn, s.layer2_rn, s.layer3_rn, s.layer4_rn)
        levels = zip(maps, self.projects, self.resize_layers, layer_rn, strict=True)
        l1, l2, l3, l4 = (rn(resize(project(m))) for m, project, resize, rn in levels)
        path = s.refinenet4(l4, size=l3.shape[-2:])
        path = s.refinenet3(path, l3, size=l2.shape[-2:])
        path = s.refinenet2(path, l2, size=l1.shape[-2:])
        return s.refinenet1(path, l1)


def dpt_classifier(features: int, num_classes: int) -> nn.Sequential:
    """The release's ``scratch.output_conv``: 3x3 conv (bias), ReLU, 1x1 conv to the classes."""
    return nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(features, num_classes, 1))
