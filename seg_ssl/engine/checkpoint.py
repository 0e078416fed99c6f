"""Atomic checkpoints: write to a temp file in the same folder, fsync, then rename over the old one.

A crash or a full disk while saving leaves the previous checkpoint intact (``os.replace`` is atomic
on POSIX within a file system); a write that fails is a one-line :class:`SaveError` naming the path
(and, when the disk is full, the space free and needed), not a traceback from torch's zip writer.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from seg_ssl.errors import CheckpointError, SaveError


def tensor_bytes(obj) -> int:
    """The bytes of every tensor in a nested dict/list: about what ``torch.save`` writes."""
    import torch
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_atomic(obj, path: str) -> None:
    import torch  # here, not at the top: only what saves needs torch
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
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, (OSError, RuntimeError)):  # torch's zip writer reports ENOSPC as RuntimeError
            need, free = tensor_bytes(obj), shutil.disk_usage(folder).free
            if free < need + (1 << 20):
                raise SaveError(f"cannot write {path}: the disk is full ({free / 2**20:.0f} MB free, the "
                                f"checkpoint needs about {need / 2**20:.0f} MB); the previous one is intact: "
                                f"free some space and run the same command to continue") from None
            if isinstance(e, OSError):
                raise SaveError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str) -> dict:
    """A checkpoint seg_ssl wrote, read without running code from it (``seg_ssl.safe_load``); older
    ones hold NumPy's RNG state as an array, the one type allowed besides plain data. Missing,
    unreadable or unsafe: a one-line :class:`CheckpointError`."""
    from seg_ssl.safe_load import NUMPY_ARRAYS, read_pth
    ckpt = read_pth(path, "checkpoint", allow=NUMPY_ARRAYS)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of weights")
    return ckpt


def model_state(ckpt: dict, which: str = "student", path: str = "checkpoint") -> dict:
    """The weights of a checkpoint written by the trainer (or a bare state dict): the trained
    model's, or with ``which`` "ema" its EMA (the method's teacher, or the weights a converter
    marked as an EMA's)."""
    held = ckpt.get("weights", "student")  # what "model" holds: a converted release file may hold an EMA
    ema = (ckpt.get("method") or {}).get("ema")
    if which == "ema" and ema is not None:
        state = ema
    elif which == held:
        state = ckpt.get("model", ckpt)
    else:
        raise CheckpointError(f"{path} holds no {which} weights (eval.model={which}); its model is the "
                              f"{held}'s: set eval.model={held}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}

