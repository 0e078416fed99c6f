"""One run per work dir: an exclusive lock, and clean-up of what a killed run left half-written."""
from __future__ import annotations

import glob
import os
import sys
import time

from seg_ssl.errors import WorkDirBusy

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
    forks (DataLoader workers) do not inherit it. A ``flock`` is shared with them through the
    inherited file, so after a SIGKILL of rank 0 its orphaned loader workers kept the work dir
    locked until they noticed their parent was gone, and a restart in that window was refused."""
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
                raise WorkDirBusy(f"work_dir {work_dir} is in use by another run (pid {pid}){waited}: wait for "
                                  f"it to end, stop it, or set work_dir to another folder") from None
            if not announced:
                print(f"work_dir {work_dir} is locked by pid {pid}; waiting up to {wait_s:g} s for it to exit",
                      file=sys.stderr, flush=True)
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
