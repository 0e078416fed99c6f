"""torch.distributed set-up for torchrun (env://): NCCL on CUDA, gloo on CPU. The collectives the
methods and the evaluator use live below them, in :mod:`seg_ssl.collectives`.

Two things here exist for elastic restarts (``torchrun --max-restarts``):

* Each attempt meets in its own key space of the launcher's store. torchrun's agent hosts one
  TCPStore for the whole job (``TORCHELASTIC_USE_AGENT_STORE=True``) and keeps it across restarts,
  while ``init_process_group`` writes every attempt's addresses under the same keys
  (``default_pg/0//cpu//0/<rank>``). A restarted rank that got there before its peer read the
  peer's address from the attempt that died: it connected to a closed port and failed, or both
  sides chose the listening role and waited for each other until the 30-minute timeout. Prefixing
  the keys with ``TORCHELASTIC_RESTART_COUNT`` makes an attempt see only its own addresses.
* Every wait is bounded by ``dist.timeout_s``, and a failed wait is one line naming the rank and
  what it waited for (:class:`DistributedError`), not a 30-minute silence or a gloo traceback.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from seg_ssl.errors import DistributedError

__all__ = ["DistInfo", "DistributedError", "init_distributed", "barrier", "cleanup", "waiting_for"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout_s: float = 600.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _attempt() -> str:
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")


def _store(rank: int, world: int, timeout: timedelta):
    """The store to meet in, or None for torch's own env:// handling (no agent store: rank 0
    hosts a fresh one each launch, so nothing is left over from an earlier attempt)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    # TORCHELASTIC_RESTART_COUNT is the same in every worker of one agent (one node); see the README,
    # "Fault tolerance", for several nodes
    return dist.PrefixStore(f"seg_ssl/attempt_{_attempt()}", store)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"^\[[^\]]*\.(cpp|cc|h|hpp):\d+\]\s*", "", text)  # gloo's "[/__w/.../pair.cc:561] "
    return text.split(". This is typically")[0]


def init_distributed(prefer_cuda: bool = True, timeout_s: float = 600.0) -> DistInfo:
    """Reads RANK/WORLD_SIZE/LOCAL_RANK set by torchrun; single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = prefer_cuda and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        try:
            store = _store(rank, world, timeout)
            if store is None:
                dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://",
                                        timeout=timeout)
            else:
                dist.init_process_group(backend="nccl" if cuda else "gloo", store=store, rank=rank,
                                        world_size=world, timeout=timeout)
        except (RuntimeError, dist.DistError) as e:
            raise DistributedError(
                f"rank {rank} of {world}: joining the process group at {where} (torchrun attempt "
                f"{_attempt()}) failed within dist.timeout_s={timeout_s:g}: {_first_line(e)}") from None
    return DistInfo(rank, world, local, device, timeout_s)


@contextlib.contextmanager
def waiting_for(what: str, info: DistInfo, iteration: int | None = None):
    """Turn a collective that timed out or lost a peer into one line naming this rank and ``what``
    it waited for (gloo reports both as RuntimeError with its source location first)."""
    if not info.distributed:
        yield
        return
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        line = _first_line(e)
        if not re.search(r"timed out|timeout|connection|closed by peer|reset by peer|broken pipe|"
                         r"socket|gloo|nccl", line, re.IGNORECASE):
            raise  # not a communication failure: a bug keeps its traceback
        at = f" at iteration {iteration}" if iteration is not None else ""
        cause = (f"no answer within dist.timeout_s={info.timeout_s:g}"
                 if re.search("timed out|timeout", line, re.I) else "another process died")
        raise DistributedError(f"rank {info.rank} of {info.world_size}: {what}{at} failed ({cause}: {line}); "
                               f"the same command (or torchrun --max-restarts) continues from "
                               f"latest.pth") from None


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
