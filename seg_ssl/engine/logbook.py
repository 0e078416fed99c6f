"""The log: its set-up, the loss window between two log lines and the line itself, and the
progress bar.

Each step's losses are summed on the device (no device sync per value); at a log line they come
back in one transfer and are averaged, each key over the steps that had it (a warm-up logs fewer
keys). Keys with a ``/`` go to TensorBoard (and ``train.jsonl``) only.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

LOG = logging.getLogger("seg_ssl")


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
        return {k: v / self.counts[k] for k, v in zip(keys, values, strict=True)}

    def record(self, avg: dict, iteration: int, lr: float) -> dict:
        """The window as one ``train.jsonl`` line: iteration, lr, mean seconds per iteration and
        waiting for data, the number of steps averaged, and every loss key."""
        return {"iteration": iteration, "lr": lr, "steps": self.steps,
                "s_per_it": (time.time() - self.t0) / self.steps, "data_s": self.data_time / self.steps,
                **avg}

    def line(self, avg: dict, iteration: int, iters: int, lr: float, log_interval: int) -> str:
        """``it 40/1500 lr 3.00e-03 loss 0.5 sup 0.5 | 0.21s/it (data 0.01s) eta 00:05:08``; a
        window cut short (a resume mid-window, the last one) says so: a mean of 3 iterations is
        noisier than one of ``log_interval``."""
        per_it = (time.time() - self.t0) / self.steps
        short = (f" (mean of {self.steps} it{'s' if self.steps > 1 else ''})" if self.steps != log_interval
                 else "")
        eta = time.strftime("%H:%M:%S", time.gmtime(per_it * (iters - iteration)))
        terms = " ".join(f"{k} {v:.4f}" for k, v in avg.items() if "/" not in k)
        return (f"it {iteration}/{iters} lr {lr:.2e} {terms}{short} | {per_it:.3f}s/it "
                f"(data {self.data_time / self.steps:.3f}s) eta {eta}")


def setup_logging(log_file: str | None, is_main: bool) -> None:
    """The ``seg_ssl`` logger: INFO on the main process (WARNING elsewhere), to stdout and, on the
    main process, to ``log_file`` (appended: every start of a run adds its lines)."""
    LOG.setLevel(logging.INFO if is_main else logging.WARNING)
    LOG.propagate = False
    for h in list(LOG.handlers):
        LOG.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    LOG.addHandler(console)
    if log_file and is_main:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        LOG.addHandler(fh)


@contextlib.contextmanager
def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar on a terminal (stderr), with the log lines (stdout) written above it: tqdm's
    redirect clears the bar, writes the line and redraws the bar, so they never run into each
    other. Without a terminal there is no bar, and the log lines (with their ETA) are all there is."""
    bar = tqdm(total=total, initial=initial, dynamic_ncols=True,
               disable=not (enabled and sys.stderr.isatty()))
    with logging_redirect_tqdm(loggers=[LOG], tqdm_class=tqdm), bar:
        yield bar
