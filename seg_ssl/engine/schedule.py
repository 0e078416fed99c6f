"""Learning-rate schedule: poly decay with an optional linear warm-up (pure function)."""
from __future__ import annotations


def poly_lr(base_lr: float, iteration: int, total_iters: int, power: float = 0.9,
            warmup_iters: int = 0, warmup_ratio: float = 0.1) -> float:
    """lr at ``iteration`` (0-based): base x (1 - it/total)^power, ramped linearly from
    base x warmup_ratio over the first ``warmup_iters``."""
    lr = base_lr * (1.0 - min(iteration, total_iters) / float(total_iters)) ** power
    if iteration < warmup_iters:
        lr *= warmup_ratio + (1.0 - warmup_ratio) * iteration / float(warmup_iters)
    return lr

