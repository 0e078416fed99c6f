#!/usr/bin/env python
"""Time and peak memory of the network's work in one UniMatch V2 training step: fused attention
(seg_ssl's DINOv2 encoder, timm's ``F.scaled_dot_product_attention``) against the release's explicit
attention (``softmax(q k^T / sqrt(d)) v``, the whole tokens x tokens matrix per head, as the release
runs without xFormers: ``dinov2_layers/attention.py``), side by side.

    python benchmarks/vit_attention.py                       # DINOv2-S, crop 518, batch 1 + 1, CPU
    python benchmarks/vit_attention.py --rounds 2 --threads 1  # fused, explicit, fused, explicit

The step is the ``unimatch_v2`` method's own (``seg_ssl/methods/unimatch_v2.py`` under
``configs/voc_unimatch_v2.yaml``, random weights): the EMA teacher's no-grad eval forward of the weak
view (1 image), the student's forward of the labeled image (1) and of both strong views with
complementary dropout (2, in-batch CutMix), the loss, backward, the AdamW step of the config's
optimiser (its two moment buffers count in the memory) and the teacher's EMA update.

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETTINGS = ("fused", "explicit")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(setting: str, size: str, crop: int, steps: int, vit_blocks: int | None = None) -> dict:
    from seg_ssl.config import load_config
    from seg_ssl.engine.optim import build_optimizer
    from seg_ssl.methods import build_method
    torch.manual_seed(0)
    cfg = load_config(os.path.join(ROOT, "configs", "voc_unimatch_v2.yaml"), [
        "data.root=unused", f"model.encoder={size}", f"model.vit_blocks={vit_blocks or 'null'}",
        f"data.crop_size={crop}", "data.batch_size=1", "data.unlabeled_batch_size=1",
        "unimatch_v2.conf_thresh=0.0"])  # every pixel in the loss, as a trained teacher's confident ones
    method = build_method(cfg)
    student = method.build_model()
    method.setup(student)  # the EMA teacher: a copy of the student
    for net in (student, method.teacher):
        for block in net.encoder.blocks:
            block.attn.fused_attn = setting == "fused"
    optimizer = build_optimizer(cfg, student)
    g = torch.Generator().manual_seed(1)
    classes = cfg.data.num_classes
    labeled = {"image": torch.randn(1, 3, crop, crop, generator=g),
               "label": torch.randint(0, classes, (1, crop, crop), generator=g),
               "valid": torch.ones(1, crop, crop, dtype=torch.bool)}
    unlabeled = {k: torch.randn(1, 3, crop, crop, generator=g) for k in ("image", "strong1", "strong2")}
    unlabeled["valid"] = torch.ones(1, crop, crop, dtype=torch.bool)
    built = rss_mib()
    times, loss = [], None
    for it in range(steps + 1):  # the first step warms up (allocator, oneDNN primitives)
        t0 = time.perf_counter()
        loss = method.training_step(student, labeled, unlabeled, it)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(student, it)
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
