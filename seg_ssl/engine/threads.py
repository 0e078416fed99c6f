"""How many CPU threads torch uses, and why: the most explicit setting wins.

1. ``train.threads=N`` on the command line (an override of this run);
2. ``OMP_NUM_THREADS`` in the environment (a shell, a scheduler or a test runner sharing the cores);
3. ``train.threads`` from a config file;
4. torch's default (one per physical core).

The environment wins over a config file because a scheduler that gives a job one core says so in
``OMP_NUM_THREADS``, which a config written elsewhere cannot know; the log line says which setting
was used and which lost.
"""
from __future__ import annotations

import os


def resolve_threads(cfg_threads: int, from_command_line: bool, environ=None) -> tuple[int, str]:
    """``(threads, reason)``; ``threads`` 0 means leave torch's default."""
    env = os.environ if environ is None else environ
    omp = env.get("OMP_NUM_THREADS", "").strip()
    omp_n = int(omp) if omp.isdigit() and int(omp) > 0 else 0
    if cfg_threads > 0 and from_command_line:
        lost = f"; OMP_NUM_THREADS={omp} is ignored" if omp_n and omp_n != cfg_threads else ""
        return cfg_threads, f"train.threads={cfg_threads} on the command line{lost}"
    if omp_n:
        lost = (f", which wins over train.threads: {cfg_threads} of the config file" if cfg_threads > 0
                and cfg_threads != omp_n else "")
        return omp_n, f"OMP_NUM_THREADS={omp} in the environment{lost}"
    if cfg_threads > 0:
        return cfg_threads, f"train.threads: {cfg_threads} in the config file"
    return 0, "torch's default (one per core; set OMP_NUM_THREADS or train.threads=N to change it)"


def apply_threads(cfg) -> str:
    """Sets torch's thread count as :func:`resolve_threads` decides; returns the log line."""
    import torch
    n, why = resolve_threads(cfg.train.threads, "train.threads" in getattr(cfg, "command_line", ()))
    if n:
        torch.set_num_threads(n)
    return f"threads: {torch.get_num_threads()} ({why})"
