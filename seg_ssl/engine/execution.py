"""How the training step runs, apart from what it computes: the autocast dtype and gradient scaler
(``train.amp``), the memory format (``train.channels_last``) and torch.compile (``train.compile``).

* AMP runs on the CPU as on CUDA: torch autocasts to bf16 or fp16 on both, and fp16 gets a
  gradient scaler on both. Methods cast what must stay in float32 themselves (losses, softmax
  confidences, CAC's features and bank): see ``tests/test_speed_options.py``.
* channels_last converts the model's weights once and each 4-D image batch on its way to the
  device; labels and masks (3-D) stay as they are.
* torch.compile wraps the module the methods call (DDP's wrapper when distributed, as PyTorch
  recommends); the trainer keeps the plain module for evaluation and checkpoints, so a checkpoint
  has the same keys with or without compile. A backend that cannot compile (no C++ compiler, an
  unsupported op) is reported once and training continues eager.
"""
from __future__ import annotations

import torch

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context of a training step (a no-op context for ``dtype`` None)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """fp16 needs loss scaling (its gradients underflow); bf16 has float32's range and does not."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)


def channels_last_batch(batch: dict) -> dict:
    """Every floating 4-D tensor of a batch (the images) in NHWC memory format."""
    return {k: v.contiguous(memory_format=torch.channels_last)
            if torch.is_tensor(v) and v.dim() == 4 and v.is_floating_point() else v for k, v in batch.items()}


def compile_module(module: torch.nn.Module, mode: str, backend: str) -> torch.nn.Module:
    """``torch.compile(module)``; ``mode`` "default" is torch's default mode."""
    return torch.compile(module, mode=None if mode == "default" else mode, backend=backend)


def is_compile_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from torch.compile's tracing or code generation (not from the model)."""
    # imported here: torch._dynamo takes a second to import, and only a failed step asks
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError
    return isinstance(error, (TorchDynamoException, InductorError))
