"""Smoke runs: a few iterations that reach every loss term of a method, and what ``loss`` means.

A short run of a semi-supervised config never reaches its unsupervised term (the digits configs
warm up for 400-500 iterations), so a few iterations as configured test only the labeled path.
``smoke_overrides`` moves the start of the unsupervised term to iteration ``SMOKE_START``: the run
has warm-up steps and steps with every term.
"""
from __future__ import annotations

import torch

from seg_ssl.engine.trainer import Trainer
from seg_ssl.errors import ConfigError
from seg_ssl.methods import METHODS

SMOKE_ITERS = 4
SMOKE_START = 2  # iterations 1-2 are the labeled-only warm-up, 3-4 run every term


def smoke_overrides(method: str, iters: int = SMOKE_ITERS, start: int = SMOKE_START) -> list[str]:
    """Overrides for a smoke run of ``method``: ``iters`` iterations, every one logged, the
    unsupervised term from iteration ``start`` at full weight (with the thresholds a few-iteration
    model never passes at 0: the method's ``smoke_overrides``), no checkpoint before the end."""
    return [f"train.iters={iters}", "train.log_interval=1", "train.eval_interval=0",
            f"train.ckpt_interval={iters}", "resume=null", *METHODS[method].smoke_overrides(start)]


def run_smoke(cfg) -> str:
    """Trains ``cfg`` (made with :func:`smoke_overrides`), recording the terms of each step; returns
    a summary line. A run in which no step had more terms than the first (the unsupervised term
    never ran: e.g. an override moved its start past the run) is a ConfigError."""
    start = cfg.get(cfg.method, {}).get("unsup_start_iter", 0)
    if start >= cfg.train.iters:  # e.g. an override on the command line: say so before training
        raise ConfigError(f"smoke run of {cfg.method}: {cfg.method}.unsup_start_iter = {start} is not below "
                          f"train.iters = {cfg.train.iters}, so no step would go past the labeled-only terms")
    trainer = Trainer(cfg)
    terms: list[list[str]] = []
    nonzero: set = set()

    def record(iteration: int, losses: dict) -> None:
        terms.append([k for k in losses if "/" not in k])
        nonzero.update(k for k, v in losses.items() if bool(torch.as_tensor(v).ne(0).any()))

    trainer.on_step.append(record)
    try:
        trainer.train()
    finally:
        trainer.close()
    first, all_terms = terms[0], list(dict.fromkeys(k for t in terms for k in t))
    added = [k for k in all_terms if k not in first]
    if METHODS[cfg.method].uses_unlabeled and not added:
        raise ConfigError(f"smoke run of {cfg.method}: {len(terms)} iterations, but no step went past the "
                           f"labeled-only terms {first}")
    full = next((i + 1 for i, t in enumerate(terms) if any(k in t for k in added)), None)
    zero = [k for k in added if k not in nonzero]
    return (f"smoke run of {cfg.method}: {len(terms)} iterations; " +
            (f"iterations 1-{full - 1} logged {', '.join(first)}; from iteration {full} also "
             f"{', '.join(added)}" if added else f"terms {', '.join(first)}") +
            (f" (zero at every step: {', '.join(zero)})" if zero else "") + f"; work dir {cfg.work_dir}")
