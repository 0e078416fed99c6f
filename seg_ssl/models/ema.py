"""An exponential moving average of a network's weights: the teacher of UniMatch V2 (Yang et al.,
TPAMI 2025), usable by any method (``train.ema``).

After every optimizer step ``it`` (0-based), every parameter and buffer of the teacher becomes
``teacher * r + student * (1 - r)`` with ``r = min(1 - 1 / (it + 1), max_momentum)``: at step 0
``r`` is 0 and the teacher copies the student; from step 249 on it is 0.996 (the release's
``unimatch_v2.py``, the update after each step)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def ema_momentum(iteration: int, max_momentum: float = 0.996) -> float:
    """The teacher's share after step ``iteration``: ``min(1 - 1 / (iteration + 1), max_momentum)``."""
    return min(1 - 1 / (iteration + 1), max_momentum)


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of ``student`` in eval mode whose weights take no gradient."""
    teacher = copy.deepcopy(student).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = teacher * momentum + student * (1 - momentum)``, parameter by parameter and buffer
    by buffer, in that order of operations (an integer buffer, BatchNorm's batch count, is
    truncated back to an integer)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.copy_(t * momentum + s.detach() * (1 - momentum))
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(t * momentum + s.detach() * (1 - momentum))
