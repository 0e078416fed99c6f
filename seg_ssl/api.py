"""A small Python API: a checkpoint is enough, since the trainer stores the resolved config in it.

    import seg_ssl
    model = seg_ssl.load("runs/demo/unimatch/latest.pth")
    mask = model.predict("data/digits_clean/JPEGImages/val_00000.jpg")   # (H, W) class ids
    probs = model.predict_proba(image_array)                             # (K, H, W) probabilities

Inference follows the checkpoint's ``eval`` section (whole image or sliding window, scales, flip),
as ``tools/eval.py`` does; ``overrides`` (``["eval.mode=slide"]``) change it.
"""
from __future__ import annotations

import os

import numpy as np
import torch

CONFIG_SUFFIXES = (".yaml", ".yml")


def config_from_checkpoint(path: str, overrides=(), ckpt: dict | None = None):
    """The resolved config stored in a checkpoint (``ckpt`` if already read), with ``overrides``
    applied and validated as a config file would be."""
    from seg_ssl.config import ConfigError, from_dict
    from seg_ssl.engine.checkpoint import load_checkpoint
    if ckpt is None:
        ckpt = load_checkpoint(path)
    stored = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(stored, dict):
        raise ConfigError(f"checkpoint {path} holds no config (a bare state dict, or written by another "
                          f"tool): give the config file too, CONFIG {path}")
    return from_dict(stored, f"{path} (its stored config)", overrides, stored=True)


def split_positionals(first: str | None, second: str | None, rest=()) -> tuple:
    """``CONFIG CHECKPOINT [k=v ...]`` or ``CHECKPOINT [k=v ...]`` (the config stored in it), as
    the tools take them: ``(config_path or None, checkpoint, overrides)``."""
    from seg_ssl.config import ConfigError
    args = [a for a in (first, second) if a is not None] + list(rest)
    if not args:
        raise ConfigError("give a checkpoint (its stored config is used) or CONFIG CHECKPOINT")
    if args[0].endswith(CONFIG_SUFFIXES):
        if len(args) < 2 or "=" in args[1]:
            raise ConfigError(f"{args[0]} is a config: give the checkpoint after it")
        return args[0], args[1], args[2:]
    return None, args[0], args[1:]


def resolve_config(config: str | None, checkpoint: str, overrides=()):
    """The config file's config if one is given, else the one stored in the checkpoint."""
    from seg_ssl.config import load_config
    if config:
        return load_config(config, list(overrides))
    return config_from_checkpoint(checkpoint, overrides)


def as_rgb_array(image) -> np.ndarray:
    """A path, a PIL image or an array (HxWx3 uint8 RGB, HxW gray, or floats in [0, 1]) as HxWx3 uint8."""
    from seg_ssl.data.dataset import load_image
    if isinstance(image, (str, os.PathLike)):
        return load_image(os.fspath(image))
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.array(image.convert("RGB"))  # a copy: torch wants a writable array
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image (RGB), got an array of shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    # torch wants a writable array (a PIL image's np.asarray is read-only)
    return np.array(arr, order="C", copy=True) if not arr.flags.writeable else np.ascontiguousarray(arr)


class SegModel:
    """A trained model with its config: ``predict`` / ``predict_proba`` on one image."""

    def __init__(self, cfg, checkpoint: str, device=None, ckpt: dict | None = None):
        from seg_ssl.data.classes import class_names
        from seg_ssl.engine.loading import load_for_eval
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        loaded = load_for_eval(cfg, checkpoint, self.device, ckpt=ckpt)
        self.method, self.model = loaded.method, loaded.model
        self.predict_fn, self.size_divisor = loaded.predict, loaded.size_divisor
        self.num_classes = cfg.data.num_classes
        self.class_names = class_names(cfg.data.class_names, self.num_classes)

    @property
    def palette(self) -> np.ndarray:
        from seg_ssl.viz.overlay import get_palette
        return get_palette(self.cfg.data.palette, self.cfg.data.ignore_index)[:self.num_classes]

    @torch.no_grad()
    def predict_proba(self, image) -> np.ndarray:
        """Class probabilities (K, H, W), float32, at the image's resolution."""
        from seg_ssl.data.transforms import normalize
        from seg_ssl.evaluation.evaluator import predict_kwargs
        from seg_ssl.evaluation.inference import predict_probs
        x = normalize(as_rgb_array(image), self.cfg.data.mean, self.cfg.data.std)[None].to(self.device)
        probs = predict_probs(self.predict_fn, x, size_divisor=self.size_divisor, **predict_kwargs(self.cfg))
        return probs[0].cpu().numpy()

    def predict(self, image) -> np.ndarray:
        """The class map (H, W), int64 class ids."""
        return self.predict_proba(image).argmax(0)

    def __repr__(self):
        return (f"SegModel({self.cfg.method}, {self.cfg.model.arch} {self.cfg.model.encoder}, "
                f"{self.num_classes} classes)")


def load(checkpoint: str, config: str | None = None, overrides=(), device=None) -> SegModel:
    """A checkpoint written by the trainer (or ``tools/export.py --weights-only``), ready to predict.
    Its stored config is used unless ``config`` (a file) is given."""
    from seg_ssl.engine.checkpoint import load_checkpoint
    ckpt = load_checkpoint(checkpoint)
    if config:
        from seg_ssl.config import load_config
        cfg = load_config(config, list(overrides))
    else:
        cfg = config_from_checkpoint(checkpoint, overrides, ckpt=ckpt)
    return SegModel(cfg, checkpoint, device, ckpt=ckpt)
