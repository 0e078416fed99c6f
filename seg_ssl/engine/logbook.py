"""The loss window between two log lines, and the line itself.

Each step's losses are summed on the device (no device sync per value); at a log line they come
back in one transfer and are averaged, each key over the steps that had it (a warm-up logs fewer
keys). Keys with a ``/`` go to TensorBoard (and ``train.jsonl``) only.
"""
from __future__ import annotations

import time

import torch


class LossWindow:
    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums, self.counts, self.steps, self.data_time, self.t0 = {}, {}, 0, 0.0, time.time()

    def add(self, losses: dict, data_time: float) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else float(v))
            self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1
        self.data_time += data_time

    def averages(self) -> dict:
        keys = list(self.sums)
        values = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32, device=self.device)
                              for k in keys]).tolist()  # one transfer
        return {k: v / self.counts[k] for k, v in zip(keys, values)}

    def record(self, avg: dict, iteration: int, lr: float) -> dict:
        """The window as one ``train.jsonl`` line: iteration, lr, mean seconds per iteration and
        waiting for data, the number of steps averaged, and every loss key."""
        return {"iteration": iteration, "lr": lr, "steps": self.steps, "s_per_it": (time.time() - self.t0) / self.steps,
                "data_s": self.data_time / self.steps, **avg}

    def line(self, avg: dict, iteration: int, iters: int, lr: float, log_interval: int) -> str:
        """``it 40/1500 lr 3.00e-03 loss 0.5 sup 0.5 | 0.21s/it (data 0.01s) eta 00:05:08``; a
        window cut short (a resume mid-window, the last one) says so: a mean of 3 iterations is
        noisier than one of ``log_interval``."""
        per_it = (time.time() - self.t0) / self.steps
        short = f" (mean of {self.steps} it{'s' if self.steps > 1 else ''})" if self.steps != log_interval else ""
        eta = time.strftime("%H:%M:%S", time.gmtime(per_it * (iters - iteration)))
        terms = " ".join(f"{k} {v:.4f}" for k, v in avg.items() if "/" not in k)
        return (f"it {iteration}/{iters} lr {lr:.2e} {terms}{short} | {per_it:.3f}s/it "
                f"(data {self.data_time / self.steps:.3f}s) eta {eta}")
