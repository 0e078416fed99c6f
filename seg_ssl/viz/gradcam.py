"""Grad-CAM on the segmenter with the ``grad-cam`` package.

The target is the semantic-segmentation one: the class's logits summed over the pixels the model
predicts as that class. Inputs are zero-padded to the output stride and the map cropped back.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase

from seg_ssl.evaluation.inference import pad_to, round_up


def feature_layers(model) -> list[str]:
    """The modules whose outputs are the encoder's feature maps, shallow to deep, for each encoder
    family the configs use: smp ResNets (``encoder.layer1..4``, the stages past ``encoder_depth``
    are pruned) and timm ``tu-`` encoders, whose ``encoder.model`` returns a *list* of maps (Grad-CAM
    needs one tensor), so their stages are the modules timm's ``feature_info`` names
    (EfficientNet-Lite0: ``encoder.model.blocks.0 .. blocks.6``)."""
    enc = model.encoder
    if hasattr(enc, "model") and hasattr(getattr(enc.model, "feature_info", None), "module_name"):
        return [f"encoder.model.{n}" for n in enc.model.feature_info.module_name()]
    layers = [f"encoder.{n}" for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(enc, n)]
    if layers:
        return layers
    return [f"encoder.{n}" for n, _ in enc.named_children()]  # another smp encoder: its top-level parts


def default_layer(model) -> str:
    """The deepest encoder stage that the forward pass runs (e.g. layer4, or layer3 at depth 4;
    blocks.6 of a timm EfficientNet)."""
    return feature_layers(model)[-1]


def usable_layers(model: nn.Module, size: int | None = None) -> list[str]:
    """Names of the modules Grad-CAM can hook, in forward order: those that output one 4-D feature
    map (not a list, as a timm encoder's ``encoder.model`` does), leaving out leaf modules (a conv,
    a BatchNorm), whose names would bury the stages and blocks a user looks for. Found by one forward
    pass on a blank image with hooks on every module."""
    d = getattr(model, "size_divisor", 32)
    size = size or max(d, 32) * 2
    seen: list[str] = []
    hooks = []
    stages = set(feature_layers(model))  # a stage may itself be a leaf (a conv)
    for name, module in model.named_modules():
        if name in stages:
            pass
        elif not name or not any(True for _ in module.children()) or isinstance(module, _NormBase):
            continue  # a leaf, or a norm layer (timm's BatchNormAct2d holds its activation as a child)
        hooks.append(module.register_forward_hook(
            lambda m, i, o, name=name: seen.append(name) if torch.is_tensor(o) and o.ndim == 4 else None))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list(dict.fromkeys(seen))


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The module ``name``, if Grad-CAM can use it; else a ValueError listing every usable name."""
    if name in feature_layers(model):  # the stages output one map each: no probing forward pass
        return model.get_submodule(name)
    usable = usable_layers(model)
    if name in usable:
        return model.get_submodule(name)
    try:
        model.get_submodule(name)
        why = "does not output one feature map (a list, or not a 4-D tensor)"
    except AttributeError:
        why = "is not a module of the model"
    raise ValueError(f"--layer {name!r} {why}; usable layers (forward order, the encoder's stages are "
                     f"{', '.join(feature_layers(model))}): {', '.join(usable)}")


def earlier_layer(model, layer: str) -> str | None:
    """The encoder stage before ``layer`` (a suggestion when a map is flat), or None."""
    stages = feature_layers(model)
    if layer in stages and stages.index(layer) > 0:
        return stages[stages.index(layer) - 1]
    return stages[-2] if len(stages) > 1 and layer not in stages else None


def gradcam_map(model: nn.Module, image: torch.Tensor, class_index: int, layer: str | None = None):
    """Grad-CAM (H, W) in [0, 1] for one normalised image (3, H, W), and the predicted mask (H, W)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model.eval()
    h, w = image.shape[-2:]
    d = model.size_divisor
    x = pad_to(image[None], round_up(h, d), round_up(w, d))
    with torch.no_grad():
        pred = model(x)[0].argmax(0)
    mask = (pred == class_index).float().cpu().numpy()
    target_layer = resolve_layer(model, layer or default_layer(model))
    with GradCAM(model=model, target_layers=[target_layer]) as cam:
        heat = cam(input_tensor=x, targets=[SemanticSegmentationTarget(class_index, mask)])[0]
    return np.nan_to_num(heat[:h, :w]), pred[:h, :w].cpu().numpy()


def zero_map_reason(heat: np.ndarray, predicted_pixels: int, class_name: str, layer: str,
                    earlier: str | None = "encoder.layer2") -> str | None:
    """Why a Grad-CAM map is zero everywhere (None if it is not): a blank PNG says nothing."""
    if heat.max() > 0:
        return None
    if predicted_pixels == 0:
        return f"{class_name} is predicted on no pixel, so there is nothing to explain"
    return (f"the weighted activation at {layer} is negative or the same everywhere (each map is scaled to "
            f"[0, 1], so a flat one is zero too)"
            + (f"; try an earlier layer (e.g. --layer {earlier})" if earlier else ""))
