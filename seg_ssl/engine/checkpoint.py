"""Atomic checkpoints: write to a temp file in the same folder, fsync, then rename over the old one.

A crash or a full disk while saving leaves the previous checkpoint intact (``os.replace`` is atomic
on POSIX within a file system).
"""
from __future__ import annotations

import os
import tempfile

import torch


def save_atomic(obj, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a corrupt file is reported, not traced
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None


def model_state(ckpt: dict) -> dict:
    """The model weights of a checkpoint written by the trainer, or a bare state dict."""
    state = ckpt.get("model", ckpt)
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}

