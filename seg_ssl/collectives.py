"""The two collectives the methods and the evaluator need, each a no-op in a single process:
a sum over ranks (confusion matrices, counts) and a gather of rows whose count differs per rank
(CAC's negatives). Set-up and tear-down of the process group belong to :mod:`seg_ssl.engine.dist`."""
from __future__ import annotations

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over every rank, in place; returns it."""
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, without gradient; counts may differ per rank."""
    if not _distributed():
        return t.detach()
    world = dist.get_world_size()
    count = torch.tensor([t.shape[0]], device=t.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = t.new_zeros((max(counts),) + tuple(t.shape[1:]))
    padded[:t.shape[0]] = t.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)], 0)
