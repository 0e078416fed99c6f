"""How a run stops before ``train.iters``: a signal (SIGTERM from a scheduler or torchrun, SIGINT
from a terminal) finishes the step, saves ``latest.pth`` and exits; and, for the fault-tolerance
tests only, a process that kills itself at a chosen iteration."""
from __future__ import annotations

import os
import signal

FAULT_ENV = "SEG_SSL_TEST_KILL"


class StopRequested:
    """SIGTERM/SIGINT set a flag that the loop reads after each step; a second signal stops at once."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def fault_injection(rank: int):
    """A step callback ``(iteration, losses)``, or None when ``SEG_SSL_TEST_KILL`` is unset.

    ``SEG_SSL_TEST_KILL=RANK:ITERATION[,RANK:ITERATION ...]``: the k-th pair applies to torchrun's
    attempt k (``TORCHELASTIC_RESTART_COUNT``, unset: 0), whose RANK SIGKILLs itself right after
    finishing ITERATION; attempts past the list run on. The elastic-restart test kills a worker at
    a known step this way instead of racing a kill from outside."""
    spec = os.environ.get(FAULT_ENV)
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if not spec or attempt >= len(spec.split(",")):
        return None
    target_rank, target_it = (int(v) for v in spec.split(",")[attempt].split(":"))

    def kill_at_target(iteration: int, losses: dict) -> None:
        if rank == target_rank and iteration == target_it:
            os.kill(os.getpid(), signal.SIGKILL)
    return kill_at_target
