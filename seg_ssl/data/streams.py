"""Infinite, reshuffling, rank-sharded sample streams (no ``itertools.cycle``).

Batch ``k`` of a stream is a pure function of ``(seed, stream_id, k)``: pass ``e`` is a fresh
permutation of the dataset drawn from ``(seed, stream_id, e)``; its global batches of ``G`` samples
are cut in order and each rank takes its contiguous slice of ``G / world`` samples. So

* ranks see disjoint shards of every pass, and every pass is reshuffled;
* the global batch at step ``k`` is the same for any world size (2 x b equals 1 x 2b);
* resuming at iteration ``k`` only needs ``k``: nothing is cached and nothing is replayed;
* every sample carries its own augmentation seed, derived from its position in the run, so
  augmentation does not depend on DataLoader worker state.
"""
from __future__ import annotations

import math
import os
import signal

import numpy as np
import torch
from torch.utils.data import DataLoader


def sample_seed(seed: int, stream_id: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, stream_id, epoch, position]).generate_state(1)[0])


class StreamBatchSampler:
    def __init__(self, num_samples: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, stream_id: int = 0, start_batch: int = 0):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        if num_samples <= 0:
            raise ValueError("cannot stream an empty dataset")
        self.n, self.global_batch = num_samples, global_batch
        self.rank, self.world = rank, world_size
        self.seed, self.stream_id = seed, stream_id
        self.start_batch = start_batch
        # a pass holds at least one global batch: tiny labeled sets are repeated within a pass
        self.repeats = max(1, math.ceil(global_batch / num_samples))
        self.batches_per_pass = (num_samples * self.repeats) // global_batch
        self._epoch, self._perm = None, None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:
            rng = np.random.default_rng([self.seed, self.stream_id, epoch])
            self._perm = np.concatenate([rng.permutation(self.n) for _ in range(self.repeats)])
            self._epoch = epoch
        return self._perm

    def batch(self, k: int) -> list[tuple[int, int]]:
        """This rank's ``(index, seed)`` pairs for global batch ``k``."""
        epoch, j = divmod(k, self.batches_per_pass)
        per_rank = self.global_batch // self.world
        start = j * self.global_batch + self.rank * per_rank
        perm = self.permutation(epoch)
        return [(int(perm[p]), sample_seed(self.seed, self.stream_id, epoch, p))
                for p in range(start, start + per_rank)]

    def __iter__(self):
        k = self.start_batch
        while True:
            yield self.batch(k)
            k += 1


def _quiet_exit(signum, frame):
    os._exit(0)


def _worker_init(_):
    # Ctrl-C in a terminal reaches the whole process group: it is the main process's to handle (it
    # finishes the step, saves latest.pth and closes the workers); a worker interrupted by it would
    # crash the run instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM still ends a worker (multiprocessing ends workers with it at exit), but with status 0:
    # torchrun sends it to the whole process group when a peer dies, and a worker killed by a signal
    # makes torch's SIGCHLD handler raise a second error in the main process, a traceback on top of
    # the one-line "another process died" one.
    signal.signal(signal.SIGTERM, _quiet_exit)
    # one thread per worker: the main process owns the cores for the model
    torch.set_num_threads(1)
    try:
        import cv2
        cv2.setNumThreads(0)
    except ImportError:  # pragma: no cover
        pass


def make_stream(dataset, global_batch: int, rank: int, world_size: int, seed: int, stream_id: int,
                start_batch: int, num_workers: int, pin_memory: bool = False):
    """An endless iterator of collated batches, starting at batch ``start_batch``."""
    sampler = StreamBatchSampler(len(dataset), global_batch, rank, world_size, seed, stream_id,
                                 start_batch)
    # a private generator: creating the iterator must not draw from the global torch RNG, or a
    # resumed run (which creates it later) would diverge from an uninterrupted one
    gen = torch.Generator().manual_seed(sample_seed(seed, 1000 + stream_id, rank, 0))
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        persistent_workers=num_workers > 0, pin_memory=pin_memory,
                        worker_init_fn=_worker_init if num_workers > 0 else None, generator=gen)
    return iter(loader)


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Evaluation shards: every index exactly once over all ranks (no padded duplicates)."""
    return list(range(rank, n, world_size))
