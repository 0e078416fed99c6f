#!/usr/bin/env python
"""Time and peak memory of the network's work in one UniMatch V2 training step: fused attention
(seg_ssl's DINOv2 encoder, timm's ``F.scaled_dot_product_attention``) against the release's explicit
attention (``softmax(q k^T / sqrt(d)) v``, the whole tokens x tokens matrix per head, as the release
runs without xFormers: ``dinov2_layers/attention.py``), side by side.

    python benchmarks/vit_attention.py                       # DINOv2-S, crop 518, batch 1 + 1, CPU
    python benchmarks/vit_attention.py --rounds 2 --threads 1  # fused, explicit, fused, explicit

The step, composed from the network's calls until the ``unimatch_v2`` method lands (then its real
training step replaces this one): the EMA teacher's no-grad eval forward of the weak view (1 image),
the student's forward of the labeled image (1) and of the two strong views in one batch (2), the
loss ``(sup + (s1 + s2) / 2) / 2`` against random labels, backward, and an AdamW step (the release's
optimiser; its two moment buffers count in the memory). Complementary dropout is not applied (it
costs one multiply per tapped map).

Each setting runs in its own subprocess, so ``ru_maxrss`` (peak resident memory) is its own: the
table gives the peak and the part above the process after building both models ("step extra").
Time per step is the median of ``--steps`` steps after one warm-up step; ``--rounds`` repeats the
pair in turn (on a shared machine, load that comes and goes then falls on both). The explicit
setting uses timm's own non-fused branch (``attn.fused_attn = False``), the release's arithmetic.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETTINGS = ("fused", "explicit")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(setting: str, size: str, crop: int, steps: int, classes: int = 21,
            vit_blocks: int | None = None) -> dict:
    from seg_ssl.models.segmentor import Segmentor
    torch.manual_seed(0)
    student = Segmentor("dpt_unimatch_v2", size, classes, dropout=0.0, vit_blocks=vit_blocks)
    teacher = Segmentor("dpt_unimatch_v2", size, classes, dropout=0.0, vit_blocks=vit_blocks)
    teacher.load_state_dict(student.state_dict())
    teacher.eval().requires_grad_(False)
    for net in (student, teacher):
        for block in net.encoder.blocks:
            block.attn.fused_attn = setting == "fused"
    head = [p for n, p in student.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": list(student.encoder.parameters()), "lr": 5e-6}, {"params": head, "lr": 2e-4}]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    weak, labeled, strong = (torch.randn(n, 3, crop, crop, generator=g) for n in (1, 1, 2))
    label = torch.randint(0, classes, (1, crop, crop), generator=g)
    built = rss_mib()
    times, loss = [], None
    for _ in range(steps + 1):  # the first step warms up (allocator, oneDNN primitives)
        t0 = time.perf_counter()
        with torch.no_grad():
            pseudo = teacher(weak).argmax(1)
        sup = F.cross_entropy(student(labeled), label)
        s1, s2 = student(strong).chunk(2)
        loss = (sup + (F.cross_entropy(s1, pseudo) + F.cross_entropy(s2, pseudo)) / 2) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    peak = rss_mib()
    return {"setting": setting, "size": size, "crop": crop, "tokens": (crop // 14) ** 2 + 1,
            "seconds": statistics.median(times[1:]), "all_seconds": [round(t, 2) for t in times],
            "peak_mib": peak, "step_extra_mib": peak - built, "built_mib": built, "loss": loss.item(),
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="dinov2_small", choices=["dinov2_small", "dinov2_base", "dinov2_large"])
    ap.add_argument("--crop", type=int, default=518, help="a multiple of 14")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    ap.add_argument("--rounds", type=int, default=1, help="run the settings in turn this many times")
    ap.add_argument("--one", choices=SETTINGS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.crop % 14:
        ap.error(f"--crop {args.crop}: a multiple of 14 (the ViT patch)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one, args.size, args.crop, args.steps)))
        return 0
    rows = []
    for setting in [s for _ in range(args.rounds) for s in args.settings]:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", setting, "--size", args.size, "--crop",
               str(args.crop), "--steps", str(args.steps), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{setting}: failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if not rows:
        return 1
    print(f"{args.size}, crop {args.crop} ({rows[0]['tokens']} tokens), teacher 1 + student 1 + 2 images, "
          f"{rows[0]['threads']} threads, {platform.machine()}, {os.cpu_count()} cores")
    print("| attention | s / step (median) | steps | peak RSS MiB | step extra MiB | loss |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['seconds']:.2f} | {r['all_seconds']} | {r['peak_mib']:.0f} | "
              f"{r['step_extra_mib']:.0f} | {r['loss']:.4f} |")
    runs = {s: [r for r in rows if r["setting"] == s] for s in SETTINGS}
    if all(runs.values()):
        sec = {s: statistics.median(r["seconds"] for r in runs[s]) for s in SETTINGS}
        mem = {s: max(r["step_extra_mib"] for r in runs[s]) for s in SETTINGS}
        print(f"fused vs explicit: {sec['explicit'] / sec['fused']:.2f}x faster (median over the rounds), "
              f"step extra memory {mem['fused']:.0f} vs {mem['explicit']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
