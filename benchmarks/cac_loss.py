#!/usr/bin/env python
"""Forward+backward time and peak memory of CAC's contrastive loss, side by side.

    python benchmarks/cac_loss.py [--scale voc|cityscapes|small] [--device cpu|cuda] [--repeat 3]

Variants (each in its own subprocess on the CPU, so peak RSS is its own):
  ours     seg_ssl.losses.anchor_contrast: one pass, online log-sum-exp, gradient accumulated in forward
  release  the published approach, re-written from its description: exp-space sums over chunks of
           8,000 negatives, each chunk under activation checkpointing, shifted by the row max of the
           positive and the first chunk
  naive    the full n x N matrix with autograd (skipped where it would not fit)
  bare     only the matrix products the loss cannot avoid: n x N x D forward (a @ neg.T) and
           n x N x D for the gradient (w @ neg), tiled (1,024 anchors x 8,192 negatives), no exp/mask
All anchors are in one direction (crop 2 more confident everywhere), the worst case for one loss call.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCALES = {"small": (1024, 8192, 128), "voc": (6400, 51200, 128), "cityscapes": (16200, 129600, 128)}
T = 0.1


def inputs(n, big_n, d, k, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device).requires_grad_()
    p = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device)
    neg = F.normalize(torch.randn(big_n, d, generator=g), dim=1).to(device)
    ya = torch.randint(0, k, (n,), generator=g).to(device)
    yn = torch.randint(0, k, (big_n,), generator=g).to(device)
    return a, p, neg, ya, yn


def ours(a, p, neg, ya, yn):
    from seg_ssl.losses.contrastive import anchor_contrast
    return anchor_contrast(a, p, ya, neg, yn, T, chunk=8192).mean()


def release(a, p, neg, ya, yn, chunk=8000):
    pos = (a * p).sum(1, keepdim=True) / T
    first = (a @ neg[:chunk].t()) / T
    m = torch.max(pos, first.max(1, keepdim=True).values).detach()
    del first

    def part(a_, nb, yb):
        s = (a_ @ nb.t()) / T
        mask = (ya[:, None] != yb[None, :]).float()
        return (torch.exp(s - m) * mask).sum(1, keepdim=True)

    total = torch.exp(pos - m)
    for st in range(0, neg.shape[0], chunk):
        total = total + checkpoint(part, a, neg[st:st + chunk], yn[st:st + chunk], use_reentrant=False)
    prob = torch.exp(pos - m) / (total + 1e-8)
    return (-torch.log(prob + 1e-8)).mean()


def naive(a, p, neg, ya, yn):
    pos = (a * p).sum(1, keepdim=True) / T
    s = (a @ neg.t()) / T
    s = s.masked_fill(ya[:, None] == yn[None, :], float("-inf"))
    return (torch.logsumexp(torch.cat([pos, s], 1), 1, keepdim=True) - pos).mean()


def bare(a, p, neg, ya, yn, chunk=8192, rows=1024):
    """Timing floor: the two unavoidable products, nothing else, tiled like ours (the fastest
    tiling measured here) so the floor is not inflated by cache misses."""
    with torch.no_grad():
        g = torch.zeros_like(a)
        for r0 in range(0, a.shape[0], rows):
            for st in range(0, neg.shape[0], chunk):
                nb = neg[st:st + chunk]
                g[r0:r0 + rows].addmm_(a[r0:r0 + rows] @ nb.t(), nb)
    return (a * g).sum() * 0.0


VARIANTS = {"ours": ours, "release": release, "naive": naive, "bare": bare}


def run_one(variant, scale, device, repeat):
    n, big_n, d = SCALES[scale]
    dev = torch.device(device)
    a, p, neg, ya, yn = inputs(n, big_n, d, 21, dev)
    fn = VARIANTS[variant]
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, value = [], None
    for _ in range(repeat + 1):  # the first run warms up
        a.grad = None
        t0 = time.perf_counter()
        loss = fn(a, p, neg, ya, yn)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        value = float(loss)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "scale": scale, "device": device, "n": n, "N": big_n, "D": d,
            "seconds": min(times[1:]), "peak_extra_mb": peak / 2**20, "loss": value}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="voc", choices=list(SCALES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--variants", default="bare,ours,release,naive")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one, args.scale, args.device, args.repeat)))
        return
    n, big_n, _ = SCALES[args.scale]
    rows = []
    for v in args.variants.split(","):
        if v == "naive" and args.device == "cpu" and n * big_n * 4 * 4 > 16 * 2**30:
            print(f"naive: skipped at {args.scale} scale (needs > 16 GiB for the n x N matrices)")
            continue
        cmd = [sys.executable, __file__, "--one", v, "--scale", args.scale, "--device", args.device,
               "--repeat", str(args.repeat), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{v}: failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"| variant | n | N | fwd+bwd s | peak extra MiB | loss |  ({args.scale}, {args.device}, "
          f"{torch.get_num_threads()} threads)")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['n']} | {r['N']} | {r['seconds']:.2f} | {r['peak_extra_mb']:.0f} | "
              f"{r['loss']:.4f} |")
    by = {r["variant"]: r for r in rows}
    if "ours" in by and "release" in by:
        print(f"ours vs release: {by['release']['seconds'] / by['ours']['seconds']:.2f}x faster, "
              f"{by['ours']['peak_extra_mb'] / max(by['release']['peak_extra_mb'], 1):.2f}x the memory")
    if "ours" in by and "bare" in by:
        print(f"ours vs bare products: {by['ours']['seconds'] / by['bare']['seconds']:.2f}x the time")


if __name__ == "__main__":
    main()
