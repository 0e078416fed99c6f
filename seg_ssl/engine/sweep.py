"""Config sweeps: one training run per grid cell and seed, resumable, failures recorded.

The grid is a product of ``key=v1,v2,...`` axes over any dotted config key. Each run lives in its
own work dir (so an interrupted cell resumes from its ``latest.pth``), and a finished cell leaves
``result.json`` behind and is not rerun while the requested config is the one it ran with.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

RESULT = "result.json"


def split_values(text: str) -> list[str]:
    """'256,320' -> ['256', '320']; '[0.1,1.0],[0.3,1.0]' -> ['[0.1,1.0]', '[0.3,1.0]']
    (commas inside brackets or quotes do not split)."""
    out, depth, cur, quote = [], 0, "", None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
            else:
                cur += ch
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
            cur += ch
        elif ch in "]})":
            depth -= 1
            cur += ch
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    axes = []
    for spec in specs:
        if "=" not in spec:
            raise ValueError(f"--grid {spec!r}: expected key=v1,v2,...")
        key, values = spec.split("=", 1)
        vals = split_values(values)
        if not vals:
            raise ValueError(f"--grid {spec!r}: no values")
        axes.append((key.strip(), vals))
    if len({k for k, _ in axes}) != len(axes):
        raise ValueError("--grid: a key appears twice")
    return axes


def cell_name(assignment: list[tuple[str, str]], seed: int) -> str:
    parts = [f"{k.split('.')[-1]}={v}" for k, v in assignment] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "", "__".join(parts).replace(" ", ""))


def cells(axes, seeds):
    """Every (assignment, seed) of the grid, in a stable order."""
    for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in axes]):
        for seed in seeds:
            yield list(combo), seed


def cell_changes(work_dir: str, requested: dict) -> tuple[list[str], list[str]]:
    """How the config a cell was run with (its ``config.yaml``) differs from the ``requested``
    resolved config: ``(extendable, conflicting)`` as ``key old -> new`` lists. Extendable keys may
    change when a run continues (a longer ``train.iters`` resumes the cell); conflicting ones mean
    the cell's results answer another question. A cell never started has no changes."""
    import yaml

    from seg_ssl.config import resume_conflicts

    path = os.path.join(work_dir, "config.yaml")
    if not os.path.isfile(path):
        return [], []
    with open(path) as f:
        saved = yaml.safe_load(f) or {}
    conflicting = resume_conflicts(saved, requested)
    everything = resume_conflicts(saved, requested, may_change=("work_dir", "resume"))
    return [c for c in everything if c not in conflicting], conflicting


def plan(config: str, overrides: list[str], axes, seeds: list[int], out: str) -> tuple[list, dict]:
    """Every cell's resolved config, checked before anything runs (a typo fails now, not in hour
    three), against what the cell ran with earlier: ``(extend, changed)``, the finished cells whose
    run continues with settings that may change (``[(work_dir, changes)]``, e.g. more iterations)
    and the cells whose earlier run answers another question (``{work_dir: conflicts}``)."""
    from seg_ssl.config import load_config
    extend, changed = [], {}
    for assignment, seed in cells(axes, seeds):
        work = os.path.join(out, cell_name(assignment, seed))
        cfg = load_config(config, [*overrides, *[f"{k}={v}" for k, v in assignment], f"seed={seed}",
                                   f"work_dir={work}"])
        more, conflict = cell_changes(work, cfg.to_dict())
        if conflict:
            changed[work] = conflict
        elif more and os.path.isfile(os.path.join(work, RESULT)):
            extend.append((work, more))
    return extend, changed


def set_aside(work_dir: str) -> str:
    """Rename a cell's folder to ``<cell>.old`` (``.old2``, ...) so that it is trained again from
    scratch while the old run stays on disk; returns the new name."""
    k, dst = 1, work_dir + ".old"
    while os.path.exists(dst):
        k += 1
        dst = f"{work_dir}.old{k}"
    os.rename(work_dir, dst)
    return dst


CHECKPOINTS = ("latest.pth", "best.pth")


def slim_checkpoints(work_dir: str) -> int:
    """Rewrites a finished cell's checkpoints as weights and config only (no optimizer or other
    resume state: AdamW's moments alone are twice the weights); returns the bytes saved."""
    from seg_ssl.engine.checkpoint import load_checkpoint, save_atomic
    from seg_ssl.export import is_weights_only, weights_only
    saved = 0
    for name in CHECKPOINTS:
        path = os.path.join(work_dir, name)
        if not os.path.isfile(path):
            continue
        ckpt = load_checkpoint(path)
        if is_weights_only(ckpt):
            continue
        before = os.path.getsize(path)
        save_atomic(weights_only(ckpt), path)
        saved += before - os.path.getsize(path)
    return saved


def holds_weights_only(work_dir: str) -> bool:
    from seg_ssl.engine.checkpoint import load_checkpoint
    from seg_ssl.export import is_weights_only
    path = os.path.join(work_dir, "latest.pth")
    return os.path.isfile(path) and is_weights_only(load_checkpoint(path))


def run_cell(config: str, assignment, seed: int, work_dir: str, overrides: list[str], launcher: list[str],
             tools_dir: str, log, full_checkpoints: bool = False) -> dict:
    """Train (resuming if interrupted) then read the final evaluation. A failed run is recorded; a
    SIGTERM or SIGINT is passed to the run, which saves ``latest.pth``, and once it has exited the
    cell's time is recorded and KeyboardInterrupt stops the sweep."""
    done = os.path.join(work_dir, RESULT)
    if os.path.isfile(done):
        with open(done) as f:
            res = json.load(f)
        if res.get("status") == "ok":
            log(f"skip {os.path.basename(work_dir)} (done)")
            return res
    os.makedirs(work_dir, exist_ok=True)
    if holds_weights_only(work_dir):  # a finished cell kept no optimizer state: it cannot resume
        for name in CHECKPOINTS:
            if os.path.isfile(os.path.join(work_dir, name)):
                os.remove(os.path.join(work_dir, name))
        log(f"restart {os.path.basename(work_dir)} from iteration 0: its checkpoints keep weights only "
            f"(--full-checkpoints keeps cells resumable)")
    args = [*overrides, *[f"{k}={v}" for k, v in assignment], f"seed={seed}", f"work_dir={work_dir}"]
    cmd = [*launcher, os.path.join(tools_dir, "train.py"), config, *args]
    elapsed_file = os.path.join(work_dir, "sweep_seconds")
    before = float(open(elapsed_file).read()) if os.path.isfile(elapsed_file) else 0.0
    t0 = time.time()
    log(f"run  {os.path.basename(work_dir)}")
    received, child = [], []

    def forward(signum, frame):  # the run saves latest.pth and exits; the sweep waits for it
        received.append(signum)
        if child:
            child[0].send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with open(os.path.join(work_dir, "sweep_run.log"), "a") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
            child.append(proc)
            if received:  # a signal that came while the run was being started
                proc.send_signal(received[0])
            _, stderr = proc.communicate()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    seconds = before + time.time() - t0  # the cell's total over every attempt
    with open(elapsed_file, "w") as f:
        f.write(f"{seconds:.3f}")
    if received:
        log(f"stopped {os.path.basename(work_dir)} (signal {received[0]}) after {seconds:.0f}s; run the same "
            f"command to continue")
        raise KeyboardInterrupt
    res = {"values": dict(assignment), "seed": seed, "train_seconds": round(seconds, 1)}
    metrics_path = os.path.join(work_dir, "metrics.json")
    if proc.returncode == 0 and os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            m = json.load(f)
        res.update(status="ok", mIoU=m["mIoU"], aAcc=m["aAcc"], mAcc=m["mAcc"], iteration=m["iteration"])
        if not full_checkpoints:
            res["checkpoint_mb_saved"] = round(slim_checkpoints(work_dir) / 2**20, 1)
    else:
        lines = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()]
        res.update(status="failed", error=lines[-1] if lines else f"exit code {proc.returncode}")
        log(f"FAIL {os.path.basename(work_dir)}: {res['error']}")
    with open(done, "w") as f:
        json.dump(res, f, indent=1)
    return res


def write_reports(rows: list[dict], axes, out_dir: str) -> None:
    """sweep.csv (one row per run), sweep.md (mean and std over seeds) and sweep_miou.png."""
    keys = [k for k, _ in axes]
    with open(os.path.join(out_dir, "sweep.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys + ["seed", "mIoU", "aAcc", "mAcc", "train_seconds", "status", "error"])
        for r in rows:
            w.writerow([r["values"][k] for k in keys] + [r["seed"], r.get("mIoU", ""), r.get("aAcc", ""),
                                                         r.get("mAcc", ""), r.get("train_seconds", ""),
                                                         r["status"], r.get("error", "")])
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r["values"][k] for k in keys), []).append(r)
    lines = ["| " + " | ".join(keys) + " | mIoU mean | mIoU std | runs ok | mean train s |",
             "|" + "---|" * (len(keys) + 4)]
    means = {}
    for combo, rs in groups.items():
        ok = [r["mIoU"] for r in rs if r["status"] == "ok" and r.get("mIoU") is not None]
        mean = sum(ok) / len(ok) if ok else math.nan
        # a spread needs two runs: one seed has none (not 0.00)
        std = (f"{100 * math.sqrt(sum((v - mean) ** 2 for v in ok) / (len(ok) - 1)):.2f}" if len(ok) > 1
               else "-")
        means[combo] = mean
        secs = [r["train_seconds"] for r in rs]
        lines.append("| " + " | ".join(combo) + f" | {100 * mean:.2f} | {std} | {len(ok)}/{len(rs)} | "
                     f"{sum(secs) / len(secs):.0f} |")
    with open(os.path.join(out_dir, "sweep.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot_heatmap(means, axes, os.path.join(out_dir, "sweep_miou.png"))


def plot_heatmap(means: dict, axes, path: str) -> None:
    """mIoU (mean over seeds, and over any further axes) over the first two axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    (k1, v1) = axes[0]
    (k2, v2) = axes[1] if len(axes) > 1 else ("", [""])
    grid = np.full((len(v1), len(v2)), np.nan)
    for i, a in enumerate(v1):
        for j, b in enumerate(v2):
            vals = [m for combo, m in means.items() if combo[0] == a and (len(axes) < 2 or combo[1] == b)
                    and not math.isnan(m)]
            if vals:
                grid[i, j] = 100 * sum(vals) / len(vals)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(v2), 1.2 + 0.8 * len(v1)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(v1)), v1)
    ax.set_ylabel(k1)
    ax.set_xticks(range(len(v2)), v2)
    ax.set_xlabel(k2)
    for i in range(len(v1)):
        for j in range(len(v2)):
            ax.text(j, i, "failed" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}", ha="center", va="center",
                    color="white" if np.isnan(grid[i, j]) or grid[i, j] < np.nanmean(grid) else "black")
    fig.colorbar(im, ax=ax, label="val mIoU (%)")
    ax.set_title("mIoU, mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def launcher_prefix(kind: str, nproc: int) -> list[str]:
    if kind == "none":
        return [sys.executable]
    if kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    raise ValueError(f"--launcher {kind!r}: expected none or torchrun")
