"""Reading ``.pth`` files without running code from them.

A ``.pth`` file is a pickle, and unpickling an arbitrary file can call any function it names
(``os.system`` through a ``__reduce__``). Every file seg_ssl opens goes through :func:`read_pth`:
PyTorch's weights-only unpickler, which builds tensors, numbers, strings, ``None``, lists, tuples,
dicts and ``OrderedDict`` and refuses every other global before calling it. What a kind of file
needs beyond that is allowed by name, per kind, and nothing more:

    seg_ssl checkpoints         plain data; written before 0.2 they hold NumPy's RNG state as an
                                array (``NUMPY_ARRAYS``)
    release checkpoints         plain data and NumPy scalars (UniMatch's ``previous_best``, CAC's
                                ``monitor_best``: ``NUMPY_SCALARS``)
    ImageNet / DINOv2 weights   plain data

A file that needs anything else is refused in one line that names the file and the globals it
holds; nothing in it runs. ``tools/resave_checkpoint.py`` is the one place a full unpickle is
allowed, for a file its user trusts (``seg-ssl resave-checkpoint --trust``).
"""
from __future__ import annotations

import os
import re

import numpy as np
import torch
import torch.serialization as ts

from seg_ssl.errors import CheckpointError

_DTYPE_CLASSES = [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                               "uint32", "uint64", "float16", "float32", "float64")]
# NumPy 2 pickles under ``numpy._core``; files written with NumPy 1 name ``numpy.core``
NUMPY_SCALARS = [np.dtype, *_DTYPE_CLASSES, np._core.multiarray.scalar,
                 (np._core.multiarray.scalar, "numpy.core.multiarray.scalar")]
# an object array's items are built by the same restricted unpickler, so they are plain data too
NUMPY_ARRAYS = [*NUMPY_SCALARS, np.ndarray, np._core.multiarray._reconstruct,
                (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]


def _allowed_names(allow) -> set[str]:
    names = set()
    for entry in allow:
        obj, name = entry if isinstance(entry, tuple) else (entry, None)
        names.add(name or f"{obj.__module__}.{obj.__qualname__}")
    return names


def unsafe_globals(path: str, allow=()) -> list[str]:
    """The globals a torch file names that the weights-only unpickler would refuse under ``allow``,
    found by reading its pickle's opcodes (nothing is built or called)."""
    try:
        found = ts.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip-format file: the unpickler's message names one
        return []
    allowed = _allowed_names(allow)
    return sorted(g for g in found if g not in allowed)


def read_pth(path: str, what: str = "checkpoint", allow=()):
    """The object in the torch file ``path``, built by the weights-only unpickler with ``allow``
    (``NUMPY_SCALARS``, ``NUMPY_ARRAYS``) allowed besides plain data. A missing, unreadable or
    unsafe file is a one-line :class:`CheckpointError` naming ``what`` and the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path}")
    try:
        with ts.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported in one line, never traced
        message = str(e)
        refused = unsafe_globals(path, allow) if "Weights only load failed" in message else []
        if not refused and "Weights only load failed" in message:
            refused = sorted(set(re.findall(r"GLOBAL (\S+) was not an allowed global", message))
                             | set(re.findall(r"but got <class '([^']+)'>", message)))
        if refused or "Weights only load failed" in message:
            names = (", ".join(refused[:5]) + (", ..." if len(refused) > 5 else "") if refused
                     else "unknown types")
            raise CheckpointError(
                f"{what} {path} holds objects that are not plain data ({names}): refused, nothing in "
                f"it was run. Only for a file from a source you trust: seg-ssl resave-checkpoint --trust "
                f"{path} OUT.pth writes a plain copy") from None
        first = message.strip().splitlines()[0] if message.strip() else type(e).__name__
        raise CheckpointError(f"{what} {path} cannot be read as a torch file "
                              f"({type(e).__name__}: {first})") from None


def to_plain(obj, where: str = "the file"):
    """A copy of a fully unpickled checkpoint in types :func:`read_pth` builds without allowances:
    NumPy scalars become Python numbers, NumPy arrays tensors (unsigned wider than 8 bits as int64),
    ``argparse.Namespace`` a dict. Anything else is a one-line :class:`CheckpointError` naming where
    it sits and its type."""
    import argparse
    from collections import OrderedDict

    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.dtype,
                                       torch.device)):
        return obj
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        wide_unsigned = obj.dtype.kind == "u" and obj.dtype.itemsize > 1
        return torch.from_numpy(np.ascontiguousarray(obj.astype(np.int64) if wide_unsigned else obj))
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        kind = OrderedDict if isinstance(obj, OrderedDict) else dict
        return kind((k, to_plain(v, f"{where}[{k!r}]")) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise CheckpointError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which has no "
                          "plain-data form (a whole model or optimizer object: save its state_dict() "
                          "instead)")
