"""One run per work dir: an exclusive lock, and clean-up of what a killed run left half-written."""
from __future__ import annotations

import glob
import os

from seg_ssl.errors import WorkDirBusy

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; runs there are not locked
    fcntl = None

_HELD: dict = {}  # lock path -> open file: the locks this process holds (re-entrant per process)


def lock_work_dir(work_dir: str) -> None:
    """Hold ``work_dir/.lock`` until this process exits, or refuse with a one-line error naming the
    pid that holds it. The kernel drops the lock when its holder dies, so a crashed run never
    leaves a stale lock behind."""
    path = os.path.realpath(os.path.join(work_dir, ".lock"))
    if fcntl is None or path in _HELD:
        return
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise WorkDirBusy(f"work_dir {work_dir} is in use by another run (pid {pid}): wait for it to end, "
                          f"stop it, or set work_dir to another folder") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _HELD[path] = f


def unlock_work_dir(work_dir: str) -> None:
    """Give the lock back before this process exits (a run trained from Python, e.g. a notebook or
    a test, that another process is to continue)."""
    f = _HELD.pop(os.path.realpath(os.path.join(work_dir, ".lock")), None)
    if f is not None:
        f.close()  # closing the file drops the flock


def remove_stale_temp_files(work_dir: str) -> list[str]:
    """Delete checkpoint temp files (``.NAME.pth.*.tmp``) a killed save left behind; only safe while
    holding the work dir's lock. Returns what was removed."""
    stale = glob.glob(os.path.join(glob.escape(work_dir), ".*.pth.*.tmp"))
    for path in stale:
        os.remove(path)
    return stale
