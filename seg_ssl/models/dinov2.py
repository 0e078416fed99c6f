"""DINOv2 ViT/14 encoders as the UniMatch V2 release taps them, and the official DINOv2 weights.

timm's ``vit_{small,base,large}_patch14_dinov2`` builds the transformer (patch embedding, blocks with
LayerScale, fused attention); :class:`DINOv2Encoder` keeps its parts under the official DINOv2 names
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N``, ``norm``: the keys of
``dinov2_vit{s,b,l}14_pretrain.pth`` less ``mask_token``, which segmentation never uses) and runs the
release's forward (LiheYoung/UniMatch-V2 ``model/backbone/dinov2.py``, ``model/semseg/dpt.py``):

- the positional embedding (trained on a 37x37 grid) is resampled to the input's grid as the release
  does it: bicubic with ``scale_factor=(g + 0.1) / 37``, no antialias, not at all for a 37x37 square
  grid (``interpolate_pos_encoding``). timm's own resampling (by size, antialiased) differs at every
  other grid, i.e. on every Cityscapes crop and every evaluation image;
- four blocks are tapped (``dpt.py`` ``intermediate_layer_idx``), each through the final LayerNorm,
  class token dropped (``get_intermediate_layers(norm=True)``), as (B, C, H/14, W/14) maps;
- attention is PyTorch's fused ``scaled_dot_product_attention`` (timm's fused path, forced on here),
  where the release without xFormers materialises the (tokens x tokens) matrix per head.

``vit_blocks`` (tests, smoke runs) keeps the first N blocks and taps them at the same relative depths.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from seg_ssl.errors import ConfigError
from seg_ssl.models.pretrained import read_state
from seg_ssl.models.weights import load_strict

ARCH = "dpt_unimatch_v2"
PATCH = 14
PRETRAIN_GRID = 37  # 518 / 14: the grid DINOv2's pos_embed was trained on
INTERPOLATE_OFFSET = 0.1  # dinov2.py DINOv2(): interpolate_offset=0.1, interpolate_antialias=False


@dataclass(frozen=True)
class DINOv2Size:
    timm_name: str
    embed_dim: int
    depth: int
    taps: tuple[int, int, int, int]          # dpt.py intermediate_layer_idx
    features: int                            # DPT fusion width (unimatch_v2.py, supervised.py model_configs)
    out_channels: tuple[int, int, int, int]  # DPT per-level widths (same)


# the release's backbone names (configs/*.yaml ``backbone``)
SIZES = {
    "dinov2_small": DINOv2Size("vit_small_patch14_dinov2", 384, 12, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "dinov2_base": DINOv2Size("vit_base_patch14_dinov2", 768, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "dinov2_large": DINOv2Size("vit_large_patch14_dinov2", 1024, 24, (4, 11, 17, 23), 256,
                               (256, 512, 1024, 1024)),
}
# keys of the official DINOv2 files that the encoder does not have, each dropped by name
DROPPED_KEYS = {"mask_token": "the masked-image-modelling token of DINOv2's pre-training; unused here"}


def tap_indices(size: str, vit_blocks: int | None) -> tuple[int, ...]:
    """The release's taps at full depth; with ``vit_blocks`` = N below it, the same relative depths
    ``round((k + 1) N / 4) - 1``, k = 0..3, rounded half up and at least block 0 (N = 2: [0, 0, 1, 1])."""
    spec = SIZES[size]
    if vit_blocks is None or vit_blocks == spec.depth:
        return spec.taps
    return tuple(max(0, math.floor((k + 1) * vit_blocks / 4 + 0.5) - 1) for k in range(4))


def check_model_section(m: dict, origin: str) -> None:
    """The config's ``model`` section fits this network (called by ``seg_ssl.config``): a DINOv2
    encoder name with this arch only, and ``vit_blocks`` only with it."""
    if m["arch"] != ARCH:
        if m["vit_blocks"] is not None:
            raise ConfigError(f"{origin}: model.vit_blocks = {m['vit_blocks']} is for model.arch={ARCH} only "
                              f"(arch is {m['arch']})")
        return
    check_vit(m["encoder"], m["encoder_weights"], m["vit_blocks"], origin + ": ")


def check_vit(size: str, weights: str | None, vit_blocks: int | None, where: str = "") -> None:
    """A DINOv2 size of the release, at most its depth in blocks, and pretrained weights only from a
    local DINOv2 file and for the whole ViT."""
    if size not in SIZES:
        raise ConfigError(f"{where}model.encoder = {size!r}: {ARCH} is built on {', '.join(SIZES)}")
    if vit_blocks is not None and not 1 <= vit_blocks <= SIZES[size].depth:
        raise ConfigError(f"{where}model.vit_blocks = {vit_blocks}: {size} has 1 to {SIZES[size].depth} "
                          f"blocks")
    if weights is not None and vit_blocks is not None:
        raise ConfigError(f"{where}model.encoder_weights with model.vit_blocks = {vit_blocks}: pretrained "
                          f"DINOv2 weights need the whole ViT (model.vit_blocks=null)")
    if weights == "imagenet":
        raise ConfigError(f"{where}model.encoder_weights = imagenet: {ARCH} loads the official DINOv2 file "
                          f"from a local path (dinov2_vit{size[7]}14_pretrain.pth); nothing is downloaded")


class DINOv2Encoder(nn.Module):
    """timm's DINOv2 ViT/14 under the official names, returning the four tapped maps (see above)."""

    def __init__(self, size: str = "dinov2_small", vit_blocks: int | None = None):
        super().__init__()
        spec = SIZES[size]
        depth = spec.depth if vit_blocks is None else vit_blocks
        # init_values 1.0: the release's LayerScale start (timm's default is 1e-5); img_size 518 gives the
        # 37x37 pos_embed of the official files; dynamic_img_size lets the patch embedding take any
        # multiple of 14 (the resampling below is ours)
        import timm  # here: a config check imports this module, which needs no network
        vit = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, depth=depth, init_values=1.0,
                                img_size=PRETRAIN_GRID * PATCH, dynamic_img_size=True)
        self.cls_token, self.pos_embed, self.patch_embed = vit.cls_token, vit.pos_embed, vit.patch_embed
        self.blocks, self.norm = vit.blocks, vit.norm
        for block in self.blocks:
            block.attn.fused_attn = True  # timm's switch (TIMM_FUSED_ATTN=0 would turn it off)
        self.size, self.embed_dim, self.taps = size, spec.embed_dim, tap_indices(size, vit_blocks)

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(1, 1 + grid_h x grid_w, C): the class token's entry and the patch grid's, resampled from
        37x37 with ``scale_factor = (g + 0.1) / 37`` per axis (the offset keeps ``floor`` of the output
        size at ``g``), bicubic, no antialias; returned as stored for a 37x37 grid."""
        if grid_h == grid_w == PRETRAIN_GRID:
            return self.pos_embed
        pos = self.pos_embed.float()
        n = PRETRAIN_GRID
        patches = pos[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
        scale = ((grid_h + INTERPOLATE_OFFSET) / n, (grid_w + INTERPOLATE_OFFSET) / n)
        patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
        if patches.shape[-2:] != (grid_h, grid_w):  # floor(37 x (g + 0.1) / 37) is g: says so if it is not
            raise RuntimeError(f"pos_embed resampled to {tuple(patches.shape[-2:])}, not {(grid_h, grid_w)}")
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([pos[:, :1], patches], dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = x.shape
        gh, gw = h // PATCH, w // PATCH
        tokens = self.patch_embed(x).reshape(b, gh * gw, -1)  # timm's NHWC patch grid, flattened
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(gh, gw).to(tokens.dtype)
        tapped = {}
        for i, block in enumerate(self.blocks[:max(self.taps) + 1]):
            tokens = block(tokens)
            if i in self.taps:
                tapped[i] = self.norm(tokens)[:, 1:]
        return [tapped[i].transpose(1, 2).reshape(b, -1, gh, gw) for i in self.taps]


def size_of(embed_dim: int) -> str:
    """The DINOv2 size of an embedding width (or what is known)."""
    names = [name for name, spec in SIZES.items() if spec.embed_dim == embed_dim]
    return names[0] if names else f"no DINOv2 size known here ({', '.join(SIZES)})"


def load_dinov2_weights(encoder: DINOv2Encoder, path: str) -> None:
    """The official DINOv2 file ``path`` (``cls_token``, ``pos_embed`` (1, 1370, C), ``mask_token``,
    ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``) into ``encoder``, strictly, after the keys in
    ``DROPPED_KEYS``; a missing file, another size's file, or keys that differ are one line naming it."""
    if not os.path.isfile(path):
        raise ConfigError(f"model.encoder_weights: file not found: {path}")
    state = read_state(path, "model.encoder_weights")
    state = {k: v for k, v in state.items() if k not in DROPPED_KEYS}
    held = state.get("pos_embed", state.get("cls_token"))
    if held is not None and held.shape[-1] != encoder.embed_dim:
        raise ConfigError(f"model.encoder_weights {path} holds {size_of(held.shape[-1])} weights (embed dim "
                          f"{held.shape[-1]}); model.encoder is {encoder.size} (embed dim "
                          f"{encoder.embed_dim})")
    try:
        load_strict(encoder, state)
    except ValueError as e:
        raise ConfigError(f"model.encoder_weights {path}: {e}") from None
