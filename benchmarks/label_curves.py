"""Labeled-only mIoU against iterations for several label counts: where is a baseline limited by
its labels rather than by compute? (the evidence for the pretrained digits benchmark's setting)

For each labeled list, trains ``CONFIG`` with that list (one work dir each, resumable: a finished
run is not trained again) and reads the evaluations its ``metrics.jsonl`` recorded every
``train.eval_interval`` iterations; then prints a Markdown table and writes a PNG of the curves.

    python benchmarks/label_curves.py configs/digits_lite0_sup.yaml --work-root runs/lite0_curve \
        --lists 1_16=splits/1_16/labeled.txt 1_8=splits/1_8/labeled.txt 1_4=splits/1_4/labeled.txt \
        all=ImageSets/Segmentation/train.txt --png benchmarks/label_curves.png [key=value ...]
    ... --report-only      (tabulate the runs already under --work-root)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def read_curve(jsonl_path: str) -> dict:
    """``{iteration: mIoU x 100}`` from a run's metrics.jsonl (the last evaluation of an iteration
    wins: a resumed run may evaluate an iteration again)."""
    curve = {}
    if os.path.isfile(jsonl_path):
        with open(jsonl_path) as f:
            for record in map(json.loads, f):
                curve[record["iteration"]] = 100 * record["mIoU"]
    return curve


def table(curves: dict) -> str:
    """Markdown: one row per label count, one column per evaluated iteration."""
    iters = sorted({i for c in curves.values() for i in c})
    lines = ["| labeled | " + " | ".join(str(i) for i in iters) + " |", "|---|" + "---|" * len(iters)]
    for name, c in curves.items():
        lines.append(f"| {name} | " + " | ".join(f"{c[i]:.1f}" if i in c else "" for i in iters) + " |")
    return "\n".join(lines)


def plot(curves: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        its = sorted(c)
        ax.plot(its, [c[i] for i in its], marker="o", label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="labeled")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--lists", nargs="+", required=True, help="NAME=labeled list (relative to data.root)")
    p.add_argument("--work-root", required=True)
    p.add_argument("--png", default=None)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_intermixed_args(argv)
    curves = {}
    for spec in args.lists:
        name, _, lst = spec.partition("=")
        work = os.path.join(args.work_root, name)
        if not args.report_only:
            cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), args.config, *args.overrides,
                   f"data.labeled_list={lst}", f"work_dir={work}"]
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                print(f"{name}: training failed: {' '.join(cmd)}", file=sys.stderr)
                return 1
        curves[name] = read_curve(os.path.join(work, "metrics.jsonl"))
    print(table(curves))
    if args.png:
        plot(curves, args.png, f"labeled-only, {os.path.basename(args.config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
