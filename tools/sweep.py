#!/usr/bin/env python
"""Sweep any dotted config keys: one run per grid cell and seed, then a table and a heatmap.

    python tools/sweep.py configs/digits_cac.yaml --grid data.crop_size=32,48 \
        --grid cac.iou_bound="[0.1,1.0]","[0.3,1.0]" --seeds 0,1,2 --out runs/sweep [key=value ...]
    ... --launcher torchrun --nproc 4     (each run under torchrun)

Each run has its own work dir under --out with its resolved config; finished cells are skipped and
interrupted ones resume, so re-running the same command continues the sweep. A failing cell is
recorded with its error and the sweep goes on. A finished cell keeps weights-only checkpoints (no
optimizer state; --full-checkpoints keeps them resumable), so extending it trains it from the start.
Writes sweep.csv (one row per run), sweep.md (mean
and std over seeds) and sweep_miou.png (mIoU over the first two axes).
"""
import argparse
import os

from _common import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value applied to every run")
    p.add_argument("--grid", action="append", required=True, help="key=v1,v2,... (repeatable)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--launcher", default="none", choices=["none", "torchrun"])
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--out", default=None, help="default runs/sweep_<config name>")
    p.add_argument("--full-checkpoints", action="store_true",
                   help="keep each finished cell's optimizer state (resumable; ~3x the size with AdamW); "
                        "by default a finished cell keeps weights and config only")
    p.add_argument("--rerun-changed", action="store_true",
                   help="train cells again from scratch whose earlier run used other settings (the old "
                        "folder is kept as <cell>.old)")
    args = p.parse_intermixed_args(argv)
    from seg_ssl.engine import sweep
    from seg_ssl.errors import ConfigError

    try:
        axes = sweep.parse_grid(args.grid)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    out = args.out or os.path.join("runs", "sweep_" + os.path.splitext(os.path.basename(args.config))[0])
    # a cell run earlier with other settings is not reported as if it answered this sweep
    extend, changed = sweep.plan(args.config, args.overrides, axes, seeds, out)
    for work, more in extend:
        os.remove(os.path.join(work, sweep.RESULT))  # e.g. more iterations: the cell resumes
        print(f"extend {os.path.basename(work)}: {'; '.join(more)}")
    if changed and not args.rerun_changed:
        first, keys = next(iter(changed.items()))
        raise ConfigError(f"sweep: {len(changed)} cell(s) in {out} ran with other settings "
                          f"({os.path.basename(first)}: {'; '.join(keys)}); pass --rerun-changed to train "
                          f"them again (old folders kept as <cell>.old) or choose another --out")
    for work in changed:
        kept = sweep.set_aside(work)
        print(f"rerun {os.path.basename(work)}: earlier run kept as {os.path.basename(kept)}")
    os.makedirs(out, exist_ok=True)
    tools_dir = os.path.dirname(os.path.abspath(__file__))
    launcher = sweep.launcher_prefix(args.launcher, args.nproc)
    rows = []
    for assignment, seed in sweep.cells(axes, seeds):
        work = os.path.join(out, sweep.cell_name(assignment, seed))
        rows.append(sweep.run_cell(os.path.abspath(args.config), assignment, seed, work, args.overrides,
                                   launcher, tools_dir, print, args.full_checkpoints))
        sweep.write_reports(rows, axes, out)  # partial reports while the sweep runs
    with open(os.path.join(out, "sweep.md")) as f:
        print(f.read())
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows)} runs, {failed} failed; {out}/sweep.csv, sweep.md, sweep_miou.png")
    return 0


if __name__ == "__main__":
    run_cli(main)
