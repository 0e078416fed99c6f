"""Grad-CAM on the segmenter with the ``grad-cam`` package.

The target is the semantic-segmentation one: the class's logits summed over the pixels the model
predicts as that class. Inputs are zero-padded to the output stride and the map cropped back.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from seg_ssl.evaluation.inference import pad_to, round_up


def default_layer(model) -> str:
    """The encoder's last block that the forward pass runs (e.g. layer4, or layer3 at depth 4)."""
    for name in ("layer4", "layer3", "layer2", "layer1"):
        if hasattr(model.encoder, name):
            return f"encoder.{name}"
    children = [n for n, _ in model.encoder.named_children()]
    return f"encoder.{children[-1]}"


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n and n.count(".") < 2]
        raise ValueError(f"--layer {name!r} is not a module of the model; e.g. {names[:12]}") from None


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


def zero_map_reason(heat: np.ndarray, predicted_pixels: int, class_name: str, layer: str) -> str | None:
    """Why a Grad-CAM map is zero everywhere (None if it is not): a blank PNG says nothing."""
    if heat.max() > 0:
        return None
    if predicted_pixels == 0:
        return f"{class_name} is predicted on no pixel, so there is nothing to explain"
    return (f"the weighted activation at {layer} is negative or the same everywhere (each map is scaled to "
            f"[0, 1], so a flat one is zero too); try an earlier layer (e.g. --layer encoder.layer2)")
