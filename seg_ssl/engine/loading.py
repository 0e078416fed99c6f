"""Build a method's model from a config and load a checkpoint for evaluation or inference."""
from __future__ import annotations

import torch

from seg_ssl.errors import ConfigError
from seg_ssl.engine.checkpoint import load_checkpoint, model_state
from seg_ssl.methods import build_method
from seg_ssl.models.weights import load_strict


def load_for_eval(cfg, checkpoint: str, device=torch.device("cpu"), ckpt: dict | None = None):
    """Returns ``(predict_fn, size_divisor, method)`` with the model in eval mode on ``device``;
    ``ckpt``: the checkpoint already read (from ``checkpoint``), so it is not read twice."""
    cfg.model.encoder_weights = None  # the checkpoint holds every weight; never download or read
    method = build_method(cfg)
    ckpt = load_checkpoint(checkpoint) if ckpt is None else ckpt
    try:
        load_strict(method.model, model_state(ckpt))
    except ValueError as e:
        raise ConfigError(f"checkpoint {checkpoint} does not match the config's model: {e}; "
                          f"was it trained with this config?") from None
    method.model.to(device).eval()
    return method.predictor(method.model), method.size_divisor(method.model), method
