"""Segmentor: an encoder + decoder with our own classifier and pixel-projector heads.

The encoder and decoder are smp's (DeepLabv3+ or PSPNet on any smp or timm encoder), one
release's own DeepLabv3+ (``seg_ssl.models.release``: UniMatch, CPS, CAC), or UniMatch V2's DINOv2
ViT/14 with its DPT head (``seg_ssl.models.dinov2``, ``seg_ssl.models.dpt``). smp's
``SegmentationModel.forward`` fuses decoder and head; the methods need the decoder features (CAC
projects them), so we run ``encoder -> decoder`` ourselves and keep smp's weights layout.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from seg_ssl.errors import ConfigError
from seg_ssl.models import dinov2
from seg_ssl.models.dpt import DPTHead, dpt_classifier
from seg_ssl.models.pretrained import PACKAGED, load_packaged_encoder, read_state
from seg_ssl.models.release import RELEASES, build_release_network
from seg_ssl.models.small_maps import use_small_map_convs
from seg_ssl.models.weights import load_strict


class Segmentor(nn.Module):
    def __init__(self, arch: str = "deeplabv3plus", encoder: str = "resnet50",
                 num_classes: int = 21, encoder_weights: str | None = None, encoder_depth: int = 5,
                 output_stride: int = 16, decoder_channels: int = 256, aspp_separable: bool = False,
                 aspp_dropout: float = 0.5, dropout: float = 0.1, projector: bool = False,
                 proj_dim: int = 128, aspp_rates=None, vit_blocks: int | None = None):
        super().__init__()
        # smp (with timm) takes seconds to import: here, not at the top, so that reading a config,
        # which imports the methods and through them this module, never loads it
        import segmentation_models_pytorch as smp
        smp_weights = "imagenet" if encoder_weights == "imagenet" else None
        if aspp_rates is not None and (len(aspp_rates) != 3 or not all(isinstance(r, int) and r > 0
                                                                        for r in aspp_rates)):
            raise ConfigError(f"model.aspp_rates = {aspp_rates!r}: expected three positive integers, e.g. "
                              "[6, 12, 18]")
        self.align_corners = False
        self.release = arch in RELEASES
        self.vit = arch == dinov2.ARCH
        if self.vit:
            dinov2.check_vit(encoder, encoder_weights, vit_blocks)
            if dropout:
                raise ConfigError(f"model.dropout = {dropout}: the UniMatch V2 release's classifier has no "
                                  f"dropout (set model.dropout=0.0 with {arch})")
            spec = dinov2.SIZES[encoder]
            net = nn.Module()
            net.encoder = dinov2.DINOv2Encoder(encoder, vit_blocks)
            net.decoder = DPTHead(spec.embed_dim, spec.features, spec.out_channels)
            # the decoder's output sits at 8x the token grid: stride 14 / 8 in pixels
            feat_channels, self.output_stride = spec.features, dinov2.PATCH
            self.feature_stride = dinov2.PATCH / 8
            self.align_corners = True
        elif self.release:
            net = nn.Module()
            net.encoder, net.decoder = build_release_network(arch, encoder, output_stride, aspp_rates,
                                                             aspp_dropout)
            feat_channels, self.output_stride, self.feature_stride = 256, output_stride, 4
            self.align_corners = net.decoder.align_corners
        elif arch == "deeplabv3plus":
            net = smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=smp_weights,
                                    encoder_depth=encoder_depth, encoder_output_stride=output_stride,
                                    decoder_channels=decoder_channels,
                                    decoder_aspp_separable=aspp_separable, decoder_aspp_dropout=aspp_dropout,
                                    classes=num_classes,
                                    **({"decoder_atrous_rates": tuple(aspp_rates)} if aspp_rates else {}))
            feat_channels = decoder_channels
            # at depth 4 the encoder stops at layer3 (stride 16) and nothing is dilated
            self.output_stride = min(output_stride, 2 ** encoder_depth)
            self.feature_stride = 4
        elif arch == "pspnet":
            # smp's default PSPNet (depth 3) stops at layer2; the published PSPNet is the full,
            # dilated ResNet: depth 5 with layer3/layer4 dilated to the output stride.
            net = smp.PSPNet(encoder_name=encoder, encoder_weights=smp_weights,
                             encoder_depth=encoder_depth, psp_out_channels=512, classes=num_classes,
                             upsampling=output_stride)
            if encoder_depth == 5 and encoder.startswith("tu-"):
                # timm encoders dilate when built (smp's PSPNet does not pass the stride on)
                net.encoder = smp.encoders.get_encoder(encoder, depth=5, weights=smp_weights,
                                                       output_stride=output_stride)
                self.output_stride = output_stride
            elif encoder_depth == 5:
                net.encoder.make_dilated(output_stride)
                self.output_stride = output_stride
            else:
                self.output_stride = 2 ** encoder_depth
            feat_channels = 512
            self.feature_stride = self.output_stride
        else:
            raise ConfigError(f"model.arch {arch!r}: expected deeplabv3plus, pspnet, {dinov2.ARCH} or one of "
                              f"{sorted(RELEASES)}")
        self.encoder, self.decoder = net.encoder, net.decoder
        # smp keeps the stages past encoder_depth although forward never runs them: drop them, or
        # DDP would wait for gradients that never come and the optimizer would carry dead weights
        self.pruned = [f"layer{i}" for i in range(encoder_depth, 5) if hasattr(self.encoder, f"layer{i}")]
        for name in self.pruned:
            delattr(self.encoder, name)
        self.pruned += prune_timm_blocks(self.encoder)
        self.arch, self.num_classes, self.feat_channels = arch, num_classes, feat_channels
        # the CAC release drops single activations before its classifier (nn.Dropout), the rest channels;
        # UniMatch V2's is its head's output_conv (3x3, ReLU, 1x1)
        drop = nn.Dropout(dropout) if arch == "deeplabv3plus_cac" else nn.Dropout2d(dropout)
        self.classifier = (dpt_classifier(feat_channels, num_classes) if self.vit
                           else nn.Sequential(drop, nn.Conv2d(feat_channels, num_classes, 1)))
        self.projector = (nn.Sequential(nn.Conv2d(feat_channels, feat_channels, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(feat_channels, proj_dim, 1)) if projector else None)
        if encoder_weights in PACKAGED:
            load_packaged_encoder(self.encoder, encoder_weights, encoder)
        elif self.vit and encoder_weights is not None:
            dinov2.load_dinov2_weights(self.encoder, encoder_weights)
        elif encoder_weights == "imagenet" and self.release:
            raise ConfigError(f"model.encoder_weights = imagenet: smp has no weights for {arch}'s backbone; "
                              f"give the release's ImageNet file (a local .pth)")
        elif encoder_weights not in (None, "imagenet"):
            load_encoder_weights(self.encoder, encoder_weights, skip=self.pruned)
        # convolutions on maps about their kernel's size (ASPP's dilated ones, EfficientNet's 5x5
        # depthwise ones on 64x64 inputs) run faster on the CPU (seg_ssl.models.small_maps; the
        # same results)
        use_small_map_convs(self)

    @property
    def size_divisor(self) -> int:
        """The encoder's output stride (a ViT/14's patch: 14) where an input side must be a
        multiple of it (``forward`` pads other sizes up to it, and evaluation pads as forward does),
        else 1: the releases' DeepLabv3+ networks take any size (their stride-2 convs round up and
        the decoder resizes c4 to c1)."""
        return 1 if self.release else self.output_stride

    @property
    def mask_channels(self) -> list[int]:
        """The channels of the channel masks that act where the encoder meets the decoder
        (``features(channel_masks=...)``): one entry per encoder map, or for DINOv2 one entry whose
        mask acts on all four tapped blocks (UniMatch V2's complementary dropout)."""
        if self.vit:
            return [self.encoder.embed_dim]
        if self.release:
            return [256, 2048]  # ResNetBackbone's c1 and c4
        return list(self.encoder.out_channels[1:])  # smp's first map is the input image

    @property
    def has_unused_parameters(self) -> bool:
        """Some parameters never get a gradient (the DPT head's deepest ``resConfUnit1``, kept for the
        release's keys): DDP must be built with ``find_unused_parameters``."""
        return self.vit

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` zero-padded at the bottom/right to multiples of ``size_divisor`` (zero is the
        mean colour after normalisation), as evaluation pads: then every input size trains and
        predicts, and the pixels of ``x`` keep their coordinates on every feature map."""
        h, w = x.shape[-2:]
        d = self.size_divisor
        ph, pw = -(-h // d) * d, -(-w // d) * d
        return x if (ph, pw) == (h, w) else F.pad(x, (0, pw - w, 0, ph - h))

    def _decode(self, x: torch.Tensor, fp_dropout: float | None = None,
                channel_masks: list[torch.Tensor] | None = None,
                fp_rows: slice = slice(None)) -> torch.Tensor:
        maps = self.encoder(x)
        # smp's maps[0] is the input image itself, which no decoder reads
        first = 0 if self.release or self.vit else 1
        if channel_masks is not None:  # one mask per map, or one for every map (DINOv2's taps)
            masks = channel_masks * (len(maps) - first) if len(channel_masks) == 1 else channel_masks
            maps = maps[:first] + [m * k.to(m.dtype)[:, :, None, None]
                                   for m, k in zip(maps[first:], masks, strict=True)]
        if fp_dropout is not None:
            maps = [torch.cat([m, m[fp_rows]]) for m in maps[:first]] + [
                torch.cat([m, F.dropout2d(m[fp_rows], fp_dropout, training=True)]) for m in maps[first:]]
        return self.decoder(maps)

    def features(self, x: torch.Tensor, fp_dropout: float | None = None,
                 channel_masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Decoder features at ``feature_stride`` (DeepLabv3+: 256 ch at /4; PSPNet: 512 at /8; DPT:
        64 / 128 / 256 at /1.75, i.e. 8x the token grid), ceil(H / stride) x ceil(W / stride) cells
        (an input padded to the divisor is cut back).

        ``fp_dropout`` not None (UniMatch's feature perturbation, 0 included): the decoder also gets
        every encoder map with channels dropped (Dropout2d, active in train and eval mode alike), in
        the same batch as the clean maps; the result is ``2B`` rows, the clean features first.
        ``channel_masks`` (one (B, C) tensor per map of ``mask_channels``): each encoder map is
        multiplied by its mask, channel by channel, before the decoder (UniMatch V2's
        complementary dropout)."""
        h, w = x.shape[-2:]
        s = self.feature_stride
        padded = self._padded(x)
        feats = self._decode(padded, fp_dropout, channel_masks)
        return feats if padded is x else feats[..., :math.ceil(h / s), :math.ceil(w / s)]

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(feats)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """L2-normalised pixel embeddings (CAC), in float32 under autocast too: the contrastive loss
        divides their dot products by a temperature of 0.1, where bf16's 3 digits are too few."""
        if self.projector is None:
            raise RuntimeError("this Segmentor was built without a projector (projector=False)")
        return F.normalize(self.projector(feats).float(), dim=1)

    def forward(self, x: torch.Tensor, output: str = "logits", groups: list[int] | None = None,
                fp_dropout: float = 0.0, channel_masks: list[torch.Tensor] | None = None,
                fp_rows: tuple[int, int] | None = None):
        """The one forward DDP sees (a step makes one call, as DDP wants); ``output`` picks what it
        returns, one type each. Methods call it through the entry functions below, which name it:

        - ``"logits"`` (:func:`logits`): logits at the input resolution, (B, K, H, W);
        - ``"fp"`` (:func:`logits_and_perturbed`): ``{"logits", "logits_fp"}``, the second from the
          decoder fed the encoder maps with ``fp_dropout`` of their channels dropped (UniMatch), of
          every row or of rows ``fp_rows`` = (start, stop) only;
        - ``"proj"`` (:func:`logits_and_projection`): ``{"logits", "proj", "pseudo_logits"}``: the
          L2-normalised projector embeddings and the classifier's logits (no gradient, no dropout)
          at stride 8 (CAC).

        ``groups`` (sizes along the batch) runs each group through the network on its own, so that
        BatchNorm normalises each with its own statistics (labeled and unlabeled images apart).
        ``channel_masks`` (:func:`logits_with_channel_masks`) multiply the encoder maps."""
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r}: expected one of {OUTPUTS}")
        if groups is not None:
            if fp_rows is not None:
                raise ValueError("fp_rows picks rows of one batch: give no groups with it")
            parts = x.split(list(groups))
            masks = [m.split(list(groups)) for m in channel_masks] if channel_masks is not None else None
            return cat_outputs([self(part, output, fp_dropout=fp_dropout,
                                     channel_masks=[m[i] for m in masks] if masks is not None else None)
                                for i, part in enumerate(parts)])
        h, w = x.shape[-2:]
        padded = self._padded(x)
        feats = self._decode(padded, fp_dropout if output == "fp" else None, channel_masks,
                             slice(*fp_rows) if fp_rows is not None else slice(None))
        logits = F.interpolate(self.classify(feats), size=padded.shape[-2:], mode="bilinear",
                               align_corners=self.align_corners)
        if padded is not x:
            logits = logits[..., :h, :w]
        if output == "fp":
            return {"logits": logits[:x.shape[0]], "logits_fp": logits[x.shape[0]:]}
        if output == "logits":
            return logits
        feats = self.at_stride_8(feats, *padded.shape[-2:])
        # the cells of whole stride-8 blocks of the input, as CAC's validity and overlap boxes count
        # them (a padded input's extra cells, and an odd side's last partial block, are cut)
        if feats.shape[-2:] != (h // 8, w // 8):
            feats = feats[..., :h // 8, :w // 8]
        with torch.no_grad():  # the classifier without its dropout (DPT's has none)
            dropout_first = isinstance(self.classifier[0], nn.Dropout | nn.Dropout2d)
            head = self.classifier[1:] if dropout_first else self.classifier
            pseudo_logits = head(feats.detach())
        return {"logits": logits, "proj": self.project(feats), "pseudo_logits": pseudo_logits}

    def at_stride_8(self, feats: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Decoder features of a (height, width) input on the grid of 8x8-pixel cells CAC works on:
        as they are at stride 8 (PSPNet), average-pooled from stride 4 (DeepLabv3+), and from the DPT
        head's stride 1.75 sampled bilinearly at each cell's centre (the features cover the input
        exactly: 8 x the token grid)."""
        s = self.feature_stride
        if s == 8:
            return feats
        if float(s).is_integer() and 8 % int(s) == 0:
            return F.avg_pool2d(feats, 8 // int(s))
        ys = (torch.arange(math.ceil(height / 8), device=feats.device) * 8 + 4) / height * 2 - 1
        xs = (torch.arange(math.ceil(width / 8), device=feats.device) * 8 + 4) / width * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).to(feats.dtype)
        return F.grid_sample(feats, grid.expand(feats.shape[0], -1, -1, -1), mode="bilinear",
                             align_corners=False)


OUTPUTS = ("logits", "fp", "proj")


def logits(model, x: torch.Tensor, groups: list[int] | None = None) -> torch.Tensor:
    """Logits (B, K, H, W) of ``model`` (a Segmentor, DDP-wrapped or not)."""
    return model(x, "logits", groups)


def logits_and_perturbed(model, x: torch.Tensor, fp_dropout: float, groups: list[int] | None = None,
                         rows: tuple[int, int] | None = None) -> dict:
    """``{"logits", "logits_fp"}``: clean logits and those of the feature-perturbed stream, of every
    row or only of ``rows`` = (start, stop) (the decoder then runs on the perturbed maps of those
    rows alone)."""
    return model(x, "fp", groups, fp_dropout, fp_rows=rows)


def logits_with_channel_masks(model, x: torch.Tensor, masks: list[torch.Tensor],
                              groups: list[int] | None = None) -> torch.Tensor:
    """Logits (B, K, H, W) with every encoder map multiplied by its channel mask ((B, C) per map of
    ``model.mask_channels``: 1 keeps a channel, 0 drops it, 2 doubles it)."""
    return model(x, "logits", groups, channel_masks=masks)


def logits_and_projection(model, x: torch.Tensor, groups: list[int] | None = None) -> dict:
    """``{"logits", "proj", "pseudo_logits"}``: logits, stride-8 embeddings and their class logits."""
    return model(x, "proj", groups)


def prune_timm_blocks(encoder: nn.Module) -> list[str]:
    """Drop the blocks of a timm EfficientNet/MobileNet feature encoder past its last returned
    stage (encoder_depth < 5); returns their names (``model.blocks.5``, ...). timm builds and runs
    them all although no decoder reads their output: a Lite0 at depth 4 would compute its last two
    stages for nothing, and carry 2.3 M of its 3.0 M parameters that never get a gradient (DDP
    waits for those)."""
    model = getattr(encoder, "model", None)
    stages = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if not stages or not isinstance(blocks, nn.Sequential) or getattr(model, "feature_hooks", None):
        return []
    keep = max(stages)  # the forward returns block i's output when i + 1 is a stage index
    model.blocks = blocks[:keep]
    return [f"model.blocks.{i}" for i in range(keep, len(blocks))]


def has_unused_parameters(model: nn.Module) -> bool:
    """Whether any Segmentor inside ``model`` has parameters that get no gradient (DDP's
    ``find_unused_parameters``)."""
    return any(m.has_unused_parameters for m in model.modules() if isinstance(m, Segmentor))


def cat_outputs(outputs: list):
    """Concatenate per-group outputs along the batch: tensors, or dicts of tensors."""
    if isinstance(outputs[0], dict):
        return {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
    return torch.cat(outputs)


def build_segmentor(m, num_classes: int, projector: bool = False) -> Segmentor:
    """The Segmentor of config section ``model``; ``projector`` adds the pixel projector (CAC)."""
    return Segmentor(arch=m.arch, encoder=m.encoder, num_classes=num_classes,
                     encoder_weights=m.encoder_weights, encoder_depth=m.encoder_depth,
                     output_stride=m.output_stride, decoder_channels=m.decoder_channels,
                     aspp_separable=m.aspp_separable, aspp_dropout=m.aspp_dropout, dropout=m.dropout,
                     projector=projector, proj_dim=m.proj_dim, aspp_rates=m.aspp_rates,
                     vit_blocks=m.vit_blocks)


def load_encoder_weights(encoder: nn.Module, path: str, skip=()) -> None:
    """Load a torchvision or smp encoder state dict file strictly; report missing/unexpected keys.

    Accepted: a plain state dict, ``{"state_dict": ...}`` or ``{"model": ...}``; prefixes
    ``module.``, ``encoder.`` and ``backbone.`` are stripped; classifier keys (``fc.*``) and the
    modules ``skip`` names (stages past ``encoder_depth``: ``layer4``, ``model.blocks.5``) are dropped.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"model.encoder_weights: file not found: {path}")
    state = read_state(path, "model.encoder_weights")
    cleaned = {}
    for k, v in state.items():
        for prefix in ("module.", "encoder.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k.startswith(("fc.", *(f"{name}." for name in skip))):  # classifier, stages cut by encoder_depth
            continue
        cleaned[k] = v
    try:
        load_strict(encoder, cleaned)
    except ValueError as e:
        raise ConfigError(f"model.encoder_weights {path}: {e}") from None
