"""A run's work dir: every file a run writes there (:class:`RunFiles`), one run at a time (an
exclusive lock), and clean-up of what a killed run left half-written."""
from __future__ import annotations

import glob
import json
import logging
import os
import sys
import time

from seg_ssl.engine import tb
from seg_ssl.engine.checkpoint import save_atomic
from seg_ssl.errors import SaveError, WorkDirBusy
from seg_ssl.evaluation.metrics import evaluation_record, to_json

LOG = logging.getLogger("seg_ssl")


class RunFiles:
    """Every file a run writes in its work dir; only the main process writes:

        .lock                    held while the run lives: one run per work dir
        config.yaml              the resolved config of the latest start
        train.log                the log lines of every start
        train.jsonl              one line per log window (iteration, lr, losses), for programs
        latest.pth, best.pth     the state to continue from; the weights at the best mIoU
        metrics.json             the last evaluation; metrics.jsonl: every evaluation, one line each
        tb/<start time>/         TensorBoard events, one folder per run (a resume continues its own)
    """

    def __init__(self, work_dir: str, is_main: bool):
        self.dir, self.is_main = work_dir, is_main
        self._tb_dir = None

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def exists(self, name: str) -> bool:
        return os.path.isfile(self.path(name))

    @property
    def log_file(self) -> str | None:
        return self.path("train.log") if self.is_main else None

    def take(self, wait_s: float) -> None:
        """Create the work dir and hold its lock (main process), before anything is written."""
        if self.is_main:
            os.makedirs(self.dir, exist_ok=True)
            lock_work_dir(self.dir, wait_s)
            remove_stale_temp_files(self.dir)

    def release(self) -> None:
        """Give the lock back, so that another process may continue this run."""
        if self.is_main:
            unlock_work_dir(self.dir)

    def write_config(self, cfg) -> None:
        if self.is_main:
            cfg.dump(self.path("config.yaml"))

    def save_checkpoint(self, name: str, state: dict) -> None:
        """Write ``name`` atomically; a failure (full disk) is logged where a user looks first."""
        if not self.is_main:
            return
        try:
            save_atomic(state, self.path(name))
        except SaveError as e:
            LOG.error("%s", e)
            raise

    def append_train_record(self, record: dict) -> None:
        if self.is_main:
            with open(self.path("train.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def write_metrics(self, iteration: int, res: dict, class_names, model: str = "student") -> None:
        """metrics.json (the last evaluation, replaced) and metrics.jsonl (appended); ``model``: which
        network was scored (``eval.model``)."""
        if self.is_main:
            with open(self.path("metrics.json"), "w") as f:
                json.dump({"iteration": iteration, "model": model, **to_json(res)}, f, indent=1)
            with open(self.path("metrics.jsonl"), "a") as f:
                f.write(json.dumps({**evaluation_record(res, iteration, class_names), "model": model}) + "\n")

    def tensorboard(self, config: dict, resumed: bool, iteration: int) -> tb.Board:
        """This run's TensorBoard (a no-op board off the main process). A fresh run gets its own
        event folder with the config as text and hparams; a resumed run, or a second ``train()``
        call, continues its folder, dropping events past ``iteration`` (the checkpoint's)."""
        if not self.is_main:
            return tb.Board(None)
        from torch.utils.tensorboard import SummaryWriter  # only the main process writes events
        if self._tb_dir is not None:
            return tb.Board(SummaryWriter(self._tb_dir, purge_step=iteration + 1))
        self._tb_dir, new, earlier = tb.event_dir(self.dir, resumed)
        # events at the checkpoint's iteration were written before it was saved: keep them
        writer = SummaryWriter(self._tb_dir, purge_step=None if new else iteration + 1)
        if new:
            tb.log_config(writer, config)
        how = ("continued" if not new else f"a new run; {earlier} earlier run(s) in tb/ stay apart, "
               f"train.log keeps their lines above" if earlier else "a new run")
        LOG.info("TensorBoard events: %s (%s)", self._tb_dir, how)
        return tb.Board(writer)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no lockf; runs there are not locked
    fcntl = None

_HELD: dict = {}  # lock path -> open file: the locks this process holds (re-entrant per process)


def lock_work_dir(work_dir: str, wait_s: float = 0.0) -> None:
    """Hold ``work_dir/.lock`` until this process exits, or refuse with a one-line error naming the
    pid that holds it. The kernel drops the lock when its holder dies, so a crashed run never
    leaves a stale lock behind.

    A run that finds the lock held waits up to ``wait_s`` seconds for it: under ``torchrun
    --max-restarts`` the previous attempt's rank 0 may still be exiting when the new one starts.

    The lock is a POSIX record lock (``lockf``), which belongs to this process alone: processes it
    forks (DataLoader workers) do not inherit it. A ``flock`` would be shared with them through the
    inherited file: after a SIGKILL of rank 0 its orphaned loader workers would hold the work dir
    until they notice their parent is gone, and a restart in that window would be refused."""
    path = os.path.realpath(os.path.join(work_dir, ".lock"))
    if fcntl is None or path in _HELD:
        return
    f = open(path, "a+")
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        try:
            fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES, by platform
            f.seek(0)
            pid = f.read().strip() or "unknown"
            if time.monotonic() >= deadline:
                f.close()
                waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
                raise WorkDirBusy(f"work_dir {work_dir} is in use by another run (pid {pid}){waited}: wait "
                                  f"for it to end, stop it, or set work_dir to another folder") from None
            if not announced:
                print(f"work_dir {work_dir} is locked by pid {pid}; waiting up to {wait_s:g} s for it "
                      f"to exit", file=sys.stderr, flush=True)
                announced = True
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _HELD[path] = f


def unlock_work_dir(work_dir: str) -> None:
    """Give the lock back before this process exits (a run trained from Python, e.g. a notebook or
    a test, that another process is to continue). Closing the file drops the lock; nothing else in
    this process may open and close ``.lock`` meanwhile, since any close drops a POSIX lock."""
    f = _HELD.pop(os.path.realpath(os.path.join(work_dir, ".lock")), None)
    if f is not None:
        f.close()  # closing the file drops the lock


def remove_stale_temp_files(work_dir: str) -> list[str]:
    """Delete checkpoint temp files (``.NAME.pth.*.tmp``) a killed save left behind; only safe while
    holding the work dir's lock. Returns what was removed."""
    stale = glob.glob(os.path.join(glob.escape(work_dir), ".*.pth.*.tmp"))
    for path in stale:
        os.remove(path)
    return stale
