#!/usr/bin/env python
"""The five-minute demo: labeled-only and a semi-supervised method trained side by side, one CPU core
each, on the clean digits set (EfficientNet-Lite0 with Google's ImageNet weights from the pip
package), then scored on the 500 val canvases and compared.

    python tools/demo.py                    # make demo runs this
    python tools/demo.py --seed 1 --json runs/demo_seed1.json

It says which of its four steps it is on, and how long the whole took. The setting (method, labels,
network, iterations, warm-up, batch) is the shortest measured in benchmarks/README.md ("The demo")
that gains +3 mIoU or more in every seed; that section gives its time and its gain per seed.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from _common import ConfigError, run_cli

# the semi-supervised methods the demo can run: name -> (config, its config section)
METHODS = {"CAC": ("digits_lite0_cac.yaml", "cac"), "FixMatch": ("digits_lite0_fixmatch.yaml", "fixmatch"),
           "UniMatch": ("digits_lite0_unimatch.yaml", "unimatch")}
# the demo's setting (benchmarks/README.md, "The demo", measured over seeds 0, 1, 2)
METHOD, SPLIT, ITERS, WARMUP, RAMPUP = "UniMatch", "250", 1200, 500, 250
BATCH, UNLABELED_BATCH = 4, 4  # per step, both runs (labeled-only draws no unlabeled batch)
# both runs' network and forward: Lite0 to stride 16 (encoder_depth 4 leaves out the 1152-channel
# stage, which on a 64x64 canvas runs on 4x4 maps) and, for the method, every part of its step in one
# forward (train.joint_forward)
NETWORK = ["model.encoder_depth=4", "train.joint_forward=true"]


def elapsed(t0: float) -> str:
    s = int(time.time() - t0)
    return f"{s // 60} min {s % 60:02d} s"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/digits_clean", help="built here if missing")
    p.add_argument("--out", default="runs/demo", help="the two runs' work dirs go under it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default=METHOD, choices=list(METHODS))
    p.add_argument("--split", default=SPLIT, help="a split of the digits set (DATA/splits/SPLIT)")
    p.add_argument("--iters", type=int, default=ITERS)
    p.add_argument("--warmup", type=int, default=WARMUP, help="labeled-only iterations of the method")
    p.add_argument("--rampup", type=int, default=RAMPUP, help="iterations its unsupervised weight ramps over")
    p.add_argument("--json", help="also write the result (mIoU of both, the gain, the wall time) here")
    args = p.parse_args(argv)

    from seg_ssl.shipped import shipped_dir
    t0 = time.time()
    tools, configs = shipped_dir("tools"), shipped_dir("configs")
    print(f"[1/4] the clean digits set in {args.data}", flush=True)
    if not os.path.isfile(os.path.join(args.data, ".complete")):
        from seg_ssl.data.digits import DEFAULT_SPLITS, RENDERINGS, build_digits, built_stamp
        build_digits(args.data, 3000, 500, 0, splits=DEFAULT_SPLITS["clean"], **RENDERINGS["clean"])
        with open(os.path.join(args.data, ".complete"), "w") as f:
            f.write(built_stamp(3000, 500, 0, "clean") + "\n")
        print(f"      built ({elapsed(t0)})", flush=True)
    else:
        print("      already built", flush=True)

    name, (config, section) = args.method, METHODS[args.method]
    runs = {"labeled-only": ("digits_lite0_sup.yaml", os.path.join(args.out, "sup")),
            name: (config, os.path.join(args.out, name.lower()))}
    split = os.path.join(args.data, "splits", args.split, "labeled.txt")
    if not os.path.isfile(split):
        raise ConfigError(f"--split {args.split}: {split} not found (the splits of {args.data}: "
                          f"{', '.join(sorted(os.listdir(os.path.join(args.data, 'splits'))))})")
    with open(split) as f:
        labeled = sum(1 for line in f if line.strip())
    common = [f"data.root={args.data}", f"data.labeled_list=splits/{args.split}/labeled.txt",
              f"data.unlabeled_list=splits/{args.split}/unlabeled.txt", f"data.batch_size={BATCH}",
              f"data.unlabeled_batch_size={UNLABELED_BATCH}", f"train.iters={args.iters}",
              "train.eval_interval=0", "train.threads=1", "train.log_interval=100", "resume=null",
              f"seed={args.seed}", f"{section}.unsup_start_iter={args.warmup}",
              f"{section}.rampup_iters={args.rampup}", *NETWORK]
    logs = ", ".join(os.path.join(work, "train.log") for _, work in runs.values())
    print(f"[2/4] training labeled-only and {name} side by side, one core each, {args.iters} iterations "
          f"(logs: {logs})", flush=True)
    procs = {}
    for run, (cfg, work) in runs.items():
        os.makedirs(work, exist_ok=True)
        out = open(os.path.join(work, "demo_stdout.txt"), "w")
        command = [sys.executable, os.path.join(tools, "train.py"), os.path.join(configs, cfg),
                   f"work_dir={work}", *common]
        # labeled-only has slack (its steps cost a third of the method's): at a lower priority it
        # and its loader never take the method's core, the demo's critical path (0.27-0.28 s a
        # UniMatch step beside it against 0.32-0.41, benchmarks/README.md "The demo")
        lower = run == "labeled-only" and hasattr(os, "nice")
        procs[run] = (subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                       env=dict(os.environ, OMP_NUM_THREADS="1"),
                                       preexec_fn=(lambda: os.nice(10)) if lower else None), out)
    seconds = 0
    while any(proc.poll() is None for proc, _ in procs.values()):
        time.sleep(1)  # (a line every 15 s; the next step as soon as both runs end)
        seconds += 1
        if seconds % 15 == 0:
            reached = ", ".join(f"{run} {last_iteration(w)}/{args.iters}" for run, (_, w) in runs.items())
            print(f"      {elapsed(t0)}: {reached}", flush=True)
    for run, (proc, out) in procs.items():
        out.close()
        if proc.returncode:
            raise ConfigError(f"the {run} run failed (exit {proc.returncode}): see "
                              f"{runs[run][1]}/demo_stdout.txt")

    work = runs[name][1]
    print(f"[3/4] predictions of 8 val images by {name} ({work}/predictions)", flush=True)
    val = os.path.join(args.data, "ImageSets", "Segmentation", "val.txt")
    infer = subprocess.Popen([sys.executable, os.path.join(tools, "infer.py"),  # beside the comparison
                              os.path.join(work, "latest.pth"), "--input", val, "--limit", "8",
                              "--out", os.path.join(work, "predictions")], stdout=subprocess.DEVNULL)
    print(f"[4/4] val IoU (%), digits, {labeled} labeled images (split {args.split}), Lite0 ImageNet, "
          f"{args.iters} iterations each", flush=True)
    metrics = {run: os.path.join(w, "metrics.json") for run, (_, w) in runs.items()}
    # (the class names come from the runs' config.yaml: no torch to import)
    subprocess.run([sys.executable, os.path.join(tools, "compare.py"), *metrics.values(), "--names",
                    *metrics], check=True)
    if infer.wait():
        raise ConfigError(f"predicting with {work}/latest.pth failed (exit {infer.returncode})")
    scores = {}
    for run, path in metrics.items():
        with open(path) as f:
            scores[run] = json.load(f)["mIoU"]
    gain = 100 * (scores[name] - scores["labeled-only"])
    print(f"demo finished in {elapsed(t0)}: {name} {gain:+.1f} mIoU over labeled-only (seed {args.seed})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed": args.seed, "split": args.split, "iters": args.iters, "warmup": args.warmup,
                       "rampup": args.rampup, "batch": [BATCH, UNLABELED_BATCH], "method": name,
                       "network": NETWORK, "mIoU": scores, "gain": gain,
                       "seconds": round(time.time() - t0, 1)}, f, indent=1)
    return 0


def last_iteration(work_dir: str) -> int:
    """The last logged iteration of a run (its train.jsonl), 0 before the first log line."""
    try:
        with open(os.path.join(work_dir, "train.jsonl")) as f:
            lines = f.read().strip().splitlines()
        return json.loads(lines[-1])["iteration"] if lines else 0
    except (OSError, ValueError):
        return 0


if __name__ == "__main__":
    run_cli(main)
