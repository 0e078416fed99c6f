"""The random state of a process: seeding, and saving and restoring every generator a run draws from
(Python's, NumPy's, torch's CPU and CUDA ones), so that a resumed run continues the same draws."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator's state as plain data (tuples, ints, floats, tensors): a checkpoint holding
    it loads with the weights-only unpickler."""
    numpy = np.random.get_state(legacy=False)  # MT19937: a 624-word key, a position, a cached gauss
    numpy["state"] = {"key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
                      "pos": numpy["state"]["pos"]}
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state(saved):
    """NumPy's state for ``np.random.set_state`` from :func:`rng_state`'s form, or from the tuple
    ``np.random.get_state()`` gives (checkpoints written before the plain form)."""
    if isinstance(saved, (tuple, list)):
        name, key, *rest = saved
        return (name, np.asarray(key, dtype=np.uint32), *rest)
    return {**saved, "state": {"key": np.asarray(saved["state"]["key"], dtype=np.uint32),
                               "pos": int(saved["state"]["pos"])}}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
