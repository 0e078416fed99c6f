"""Build a method's model from a config and load a checkpoint for evaluation or inference."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from seg_ssl.engine.checkpoint import load_checkpoint, model_state
from seg_ssl.errors import ConfigError
from seg_ssl.methods import build_method
from seg_ssl.methods.base import Method
from seg_ssl.models.weights import load_strict

CPU = torch.device("cpu")


@dataclass
class Loaded:
    """A checkpoint's model, ready to predict: ``predict`` maps normalised images (B, 3, H, W)
    whose sides are multiples of ``size_divisor`` to logits (B, K, H, W)."""
    method: Method
    model: torch.nn.Module  # in eval mode, on its device
    predict: Callable
    size_divisor: int


def load_for_eval(cfg, checkpoint: str, device=CPU, ckpt: dict | None = None) -> Loaded:
    """The model of ``cfg`` with the weights of ``checkpoint`` (``ckpt``: the checkpoint already
    read from it, so it is not read twice)."""
    cfg.model.encoder_weights = None  # the checkpoint holds every weight; never download or read
    method = build_method(cfg)
    model = method.build_model()
    ckpt = load_checkpoint(checkpoint) if ckpt is None else ckpt
    weights = model_state(ckpt, cfg.eval.model, checkpoint)
    try:
        load_strict(model, weights)
    except ValueError as e:
        raise ConfigError(f"checkpoint {checkpoint} does not match the config's model: {e}; "
                          f"was it trained with this config?") from None
    model.to(device).eval()
    return Loaded(method, model, method.predictor(model), method.size_divisor(model))
