"""A run's state on disk: what ``latest.pth`` holds, which checkpoint a run continues from, and how
every part is put back so that a resumed run equals an uninterrupted one.

The trainer owns the loop and its counters (:class:`Progress`); this module owns the file format.
A checkpoint holds the weights, the optimizer, the AMP scaler, the method's own state (box
generators, class distributions, CAC's bank), every rank's RNG state, the counters and the resolved
config (so a resume with other settings is refused, naming the keys).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from seg_ssl.collectives import all_reduce_sum
from seg_ssl.config import MAY_CHANGE_ON_RESUME, resume_conflicts
from seg_ssl.engine import dist as du
from seg_ssl.engine.checkpoint import load_checkpoint, model_state
from seg_ssl.engine.rng import rng_state, seed_everything, set_rng_state
from seg_ssl.errors import ConfigError
from seg_ssl.models.weights import load_strict

LOG = logging.getLogger("seg_ssl")


@dataclass
class Progress:
    """The loop's counters, saved with the weights."""
    iteration: int = 0
    best: dict = field(default_factory=lambda: {"mIoU": -1.0, "iteration": 0})
    skipped: int = 0  # non-finite steps skipped (train.skip_nonfinite)
    eval_pending: bool = False  # latest.pth was saved just before an evaluation that did not finish


def find_checkpoint(cfg) -> tuple[str | None, dict | None]:
    """``(path, checkpoint)`` to continue from (``resume: auto`` = the work dir's latest.pth, or a
    path), or ``(None, None)``. A checkpoint trained with other settings than those that may change
    on resume is refused, naming the keys."""
    r = cfg.resume
    path = os.path.join(cfg.work_dir, "latest.pth") if r == "auto" else r
    if not path or not os.path.isfile(path):
        if r not in (None, "auto"):
            raise ConfigError(f"resume: checkpoint not found: {r}")
        return None, None
    try:
        ckpt = load_checkpoint(path)
    except ValueError as e:
        raise ConfigError(f"resume: cannot continue from {path} ({e}); set resume=null to start over or "
                          f"work_dir to a new folder") from None
    changed = resume_conflicts(ckpt["config"], cfg.to_dict()) if isinstance(ckpt.get("config"), dict) else []
    if changed:
        raise ConfigError(f"resume: {path} was trained with other settings: {'; '.join(changed)}. Only "
                          f"{', '.join(MAY_CHANGE_ON_RESUME)}* may change when a run continues: restore "
                          f"them, or set resume=null to start over or work_dir to a new folder")
    return path, ckpt


def evaluated_at(work_dir: str, iteration: int) -> bool:
    """Whether the work dir's last finished evaluation (metrics.json) is at ``iteration``."""
    try:
        with open(os.path.join(work_dir, "metrics.json")) as f:
            return json.load(f).get("iteration") == iteration
    except (OSError, ValueError):
        return False


class RunState:
    """Gathers and restores one run's training objects (the model without DDP's wrapper, its
    optimizer and scaler, the method) in ``info``'s process group."""

    def __init__(self, cfg, info: du.DistInfo, model, optimizer, scaler, method):
        self.cfg, self.info = cfg, info
        self.model, self.optimizer, self.scaler, self.method = model, optimizer, scaler, method

    def gather_rng(self, iteration: int) -> list | None:
        """Every rank's RNG state, on rank 0 (None elsewhere). A collective: all ranks call it at
        the same step. The methods' own state (CPS/UniMatch box generators, CPS's class
        distributions, CAC's bank of gathered negatives) is the same on every rank, so rank 0's
        copy of it is enough; the global RNGs are not."""
        if not self.info.distributed:
            return [rng_state()]
        states = [None] * self.info.world_size if self.info.is_main else None
        with du.waiting_for("gathering RNG states for latest.pth", self.info, iteration):
            dist.gather_object(rng_state(), states, dst=0)
        return states

    def checkpoint(self, progress: Progress, rng_per_rank: list | None = None) -> dict:
        """What ``latest.pth`` (and ``best.pth``) holds, in plain data. ``rng_per_rank`` (from
        :meth:`gather_rng`) lets every rank continue its own random stream on resume; without it
        (best.pth, a save that only rank 0 reaches) the other ranks reseed from the position."""
        return {
            "iteration": progress.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.method.state_dict(),
            "rng": rng_state(),
            "rng_per_rank": rng_per_rank,
            "best": progress.best,
            "skipped": progress.skipped,
            "eval_pending": progress.eval_pending,
            "config": self.cfg.to_dict(),
        }

    def restore(self, path: str, ckpt: dict) -> Progress:
        """Put ``ckpt`` (from :func:`find_checkpoint`) back into the training objects and the RNGs;
        return its counters. Every rank calls it (the pending-evaluation flag is agreed on)."""
        try:
            load_strict(self.model, model_state(ckpt))
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, RuntimeError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"resume: cannot continue from {path} ({first}); it was written by another "
                              f"config or is damaged: set resume=null to start over or work_dir to a new "
                              f"folder") from None
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.method.load_state_dict(ckpt.get("method", {}))
        iteration = int(ckpt["iteration"])
        # latest.pth is written just before an evaluation; whether that evaluation finished is what
        # metrics.json says (rank 0 reads it, every rank follows, so all evaluate or none)
        pending = bool(ckpt.get("eval_pending", False)) and not evaluated_at(self.cfg.work_dir, iteration)
        pending = all_reduce_sum(torch.tensor(float(pending and self.info.is_main),
                                              device=self.info.device)).item() > 0
        per_rank = ckpt.get("rng_per_rank")
        if per_rank and len(per_rank) == self.info.world_size:
            # every rank continues its own stream (dropout masks, CAC's negative sampling): with
            # only rank 0's state the others would reseed, and a 2-process resume would differ
            # from the uninterrupted run
            set_rng_state(per_rank[self.info.rank])
        elif self.info.rank == 0 and ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        else:  # other world sizes reseed deterministically from the position
            seed_everything(self.cfg.seed + self.info.rank + 1000003 * iteration)
        LOG.info("resumed from %s at iteration %d", path, iteration)
        return Progress(iteration, ckpt.get("best", Progress().best), ckpt.get("skipped", 0), pending)
