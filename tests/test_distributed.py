"""Collectives on CPU with gloo, two processes spawned by the test itself."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gather_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from seg_ssl.engine.dist import all_gather_rows
        rows = 3 + 2 * rank  # different counts per rank
        t = torch.full((rows, 4), float(rank), requires_grad=True)
        g = all_gather_rows(t * 2)
        out[rank] = (g.detach().clone(), g.requires_grad)
    finally:
        dist.destroy_process_group()


def test_cac_gather_returns_all_ranks_negatives():
    world = 2
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(gather_worker, args=(world, free_port(), out), nprocs=world, join=True)
    expect = torch.cat([torch.full((3, 4), 0.0), torch.full((5, 4), 2.0)])
    for rank in range(world):
        gathered, needs_grad = out[rank]
        assert torch.equal(gathered, expect) and not needs_grad
