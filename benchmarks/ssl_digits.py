"""Semi-supervised gain on the embedded digits set: labeled-only vs CPS, CPS+CutMix, CAC, UniMatch,
FixMatch and UniMatch V2 (lite0 suite).

For each labeled ratio, method and seed, trains ``tools/train.py`` in a subprocess with the same
model, labeled batch and iterations, and reads the final val mIoU from its metrics.json. The
labeled-only baseline is also trained for the wall time of the slowest method (more iterations),
which is the fair comparison for a user with a fixed compute budget. The semi-supervised runs load
the hidden labels of their unlabeled images (``data.unlabeled_truth``) and the table reports how
right their pseudo labels are over training. Finished runs are kept under --work-root and skipped
when the script is run again, so an interrupted benchmark continues where it stopped.

Two suites: ``lite0`` (the benchmark: ImageNet-pretrained EfficientNet-Lite0 on the clean rendering,
``configs/digits_lite0_*.yaml``) and ``scratch`` (ResNet-18 from scratch on the default rendering,
``configs/digits_{sup,cps,cac,unimatch}.yaml``).

    python benchmarks/ssl_digits.py                 # lite0: 188 (1/16) and 250 labels, 7 methods,
                                                    # 3 seeds (hours)
    python benchmarks/ssl_digits.py --quick         # smoke run: 1/16, 1 seed, 60 iterations
    python benchmarks/ssl_digits.py --write-readme  # also put the table into benchmarks/README.md
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "benchmarks", "README.md")
BEGIN, END = "<!-- ssl_digits:begin -->", "<!-- ssl_digits:end -->"  # the scratch suite's block


def markers(suite: str) -> tuple[str, str]:
    """The README block of a suite's table (scratch keeps the original markers)."""
    return (BEGIN, END) if suite == "scratch" else (f"<!-- ssl_digits:{suite}:begin -->",
                                                    f"<!-- ssl_digits:{suite}:end -->")

# suite -> method name -> (config, extra overrides). In a suite every method shares the labeled-only
# config's model, optimiser, labeled batch and schedule (each method config inherits it).
SUITES = {
    "lite0": {
        "labeled-only": ("configs/digits_lite0_sup.yaml", []),
        "CPS": ("configs/digits_lite0_cps.yaml", ["cps.cutmix=false"]),
        "CPS+CutMix": ("configs/digits_lite0_cps.yaml", []),
        "CAC": ("configs/digits_lite0_cac.yaml", []),
        "UniMatch": ("configs/digits_lite0_unimatch.yaml", []),
        "FixMatch": ("configs/digits_lite0_fixmatch.yaml", []),
        "UniMatch V2": ("configs/digits_lite0_unimatch_v2.yaml", []),
    },
    "scratch": {
        "labeled-only": ("configs/digits_sup.yaml", []),
        "CPS": ("configs/digits_cps.yaml", ["cps.cutmix=false"]),
        "CPS+CutMix": ("configs/digits_cps.yaml", []),
        "CAC": ("configs/digits_cac.yaml", []),
        "UniMatch": ("configs/digits_unimatch.yaml", []),
    },
}
DATA_ROOT = {"lite0": ("data/digits_clean", "--rendering clean "), "scratch": ("data/digits", "")}
METHODS = SUITES["lite0"]


EQUAL_WALL = "labeled-only, equal wall time"
# each suite's label counts; lite0's two are where both CPS+CutMix and CAC gain 3+ (benchmarks/README.md,
# "The second label count")
DEFAULT_RATIOS = {"lite0": ["1_16", "250"], "scratch": ["1_16", "1_8"]}


def run_one(name: str, config: str, overrides: list[str], work_dir: str, threads: int) -> dict:
    """Train one run (or reuse a finished one) and return its final mIoU and wall time."""
    result_path = os.path.join(work_dir, "bench_result.json")
    if os.path.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), os.path.join(ROOT, config),
           f"work_dir={work_dir}", f"train.threads={threads}", "train.eval_interval=0", *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"{name}: {' '.join(cmd)} failed: {tail[0] if tail else proc.returncode}")
    with open(os.path.join(work_dir, "metrics.json")) as f:
        metrics = json.load(f)
    result = {"name": name, "mIoU": 100 * metrics["mIoU"], "iteration": metrics["iteration"],
              "wall_s": wall, "IoU": [100 * v for v in metrics["IoU"]], "command": " ".join(cmd[1:]),
              "pseudo_labels": pseudo_label_curve(os.path.join(work_dir, "train.jsonl"))}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def pseudo_label_curve(jsonl_path: str) -> list:
    """``[[iteration, pl_acc, pl_fg_acc], ...]`` (x 100) from a run's train.jsonl, one per logged
    window that has them (empty for labeled-only, or a run without data.unlabeled_truth). A window
    logged again after a resume replaces the first one."""
    by_iteration = {}
    if os.path.isfile(jsonl_path):
        with open(jsonl_path) as f:
            for record in map(json.loads, f):
                if "pl_acc" in record:
                    fg = record.get("pl_fg_acc")
                    by_iteration[record["iteration"]] = [record["iteration"], 100 * record["pl_acc"],
                                                         None if fg is None else 100 * fg]
    return [by_iteration[k] for k in sorted(by_iteration)]


def load_store(path: str | None) -> dict:
    """``{(name, ratio, seed): result}`` from a --store file (empty when there is none yet)."""
    if not path or not os.path.isfile(path):
        return {}
    with open(path) as f:
        return {(r["name"], r["ratio"], int(r["seed"])): r for r in json.load(f)}


def save_store(path: str, results: dict) -> None:
    """Write every result, sorted, atomically (an interrupted write leaves the previous file)."""
    rows = [{**v, "ratio": k[1], "seed": k[2]} for k, v in sorted(results.items())]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.partial{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, path)


def mean_std(values: list[float], show_n: bool = False) -> str:
    n = f" (n={len(values)})" if show_n else ""
    if len(values) == 1:
        return f"{values[0]:.1f}{n}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}{n}"


def finished_runs(work_root: str) -> dict:
    """Every finished run under ``work_root`` (RATIO/RUN/seedN/bench_result.json), by (name, ratio, seed)."""
    found = {}
    for ratio in sorted(os.listdir(work_root)) if os.path.isdir(work_root) else []:
        if not os.path.isdir(os.path.join(work_root, ratio)):  # results.json
            continue
        for run in sorted(os.listdir(os.path.join(work_root, ratio))):
            folder = os.path.join(work_root, ratio, run)
            for seed_dir in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                path = os.path.join(folder, seed_dir, "bench_result.json")
                if seed_dir.startswith("seed") and os.path.isfile(path):
                    with open(path) as f:
                        r = json.load(f)
                    found[(r["name"], ratio, int(seed_dir[4:]))] = r
    return found


def table(results: dict, ratios: list[str], seeds: list[int], base_iters: int) -> str:
    """Markdown: one row per method; per ratio the val mIoU (mean ± std over seeds), the gain over
    labeled-only (difference of the means), the share of true object pixels the pseudo labels name
    right (first logged window -> last, mean over seeds) and the mean wall time. Cells with fewer
    runs than ``seeds`` say how many they average."""
    cols = ("mIoU", "gain", "pseudo labels right", "wall")
    head = "| method | " + " | ".join(f"{r.replace('_', '/')} {c}" for r in ratios for c in cols) + " |"
    lines = [head, "|---|" + "---|" * (len(cols) * len(ratios))]
    order = {n: i for i, n in enumerate([*METHODS, EQUAL_WALL])}
    names = sorted(dict.fromkeys(n for (n, _, _) in results), key=lambda n: order.get(n, len(order)))
    for name in names:
        cells = []
        for r in ratios:
            runs = [results[(name, r, s)] for s in seeds if (name, r, s) in results]
            if not runs:
                cells += [""] * len(cols)
                continue
            miou = mean_std([x["mIoU"] for x in runs], show_n=len(runs) != len(seeds))
            iters = runs[0]["iteration"]
            suffix = f" ({iters} it)" if iters != base_iters else ""
            base = [results[("labeled-only", r, s)]["mIoU"] for s in seeds
                    if ("labeled-only", r, s) in results]
            gain = (f"{statistics.mean(x['mIoU'] for x in runs) - statistics.mean(base):+.1f}"
                    if base and name != "labeled-only" else "")
            cells += [miou + suffix, gain, pseudo_label_cell(runs),
                      f"{statistics.mean(x['wall_s'] for x in runs) / 60:.1f} min"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pseudo_label_cell(runs: list) -> str:
    """'first -> last' share of object pixels named right (pl_fg_acc), mean over the runs that logged it."""
    curves = [[p for p in r.get("pseudo_labels", []) if p[2] is not None] for r in runs]
    curves = [c for c in curves if c]
    if not curves:
        return ""
    first = statistics.mean(c[0][2] for c in curves)
    last = statistics.mean(c[-1][2] for c in curves)
    return f"{first:.0f} -> {last:.0f}"


def write_readme(text: str, suite: str = "scratch") -> None:
    begin, end = markers(suite)
    with open(README) as f:
        doc = f.read()
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    with open(README, "w") as f:
        f.write(doc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="lite0", choices=list(SUITES))
    p.add_argument("--ratios", nargs="+", default=None, help="default: 1_16 250 (lite0), 1_16 1_8 (scratch)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=None, help="default: the configs' train.iters")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each with --threads)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-root", default=None, help="default: runs/bench_ssl_digits_SUITE")
    p.add_argument("--data-root", default=None,
                   help="default: data/digits_clean (lite0), data/digits (scratch)")
    p.add_argument("--no-equal-wall", action="store_true", help="skip the equal-wall-time baseline")
    p.add_argument("--equal-wall-iters", type=int, default=None,
                   help="iterations of that baseline (default: from the measured wall times; give it when "
                        "the runs shared the machine unevenly)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1/16, one seed, 60 iterations")
    p.add_argument("--write-readme", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: tabulate every finished run under --work-root (and add those the "
                        "--store lacks to it)")
    p.add_argument("--extra", nargs="*", default=[], help="overrides for every run, key=value")
    p.add_argument("--store", default=None,
                   help="JSON of finished runs' results (benchmarks/results/ssl_digits_lite0.json holds the "
                        "measured table): runs found there are not trained again, each finished run is added")
    a = p.parse_args(argv)
    methods = SUITES[a.suite]
    a.work_root = a.work_root or os.path.join(ROOT, "runs", f"bench_ssl_digits_{a.suite}")
    a.data_root = a.data_root or DATA_ROOT[a.suite][0]
    a.ratios = a.ratios or DEFAULT_RATIOS[a.suite]
    if a.quick:
        a.ratios, a.seeds, a.iters = ["1_16"], [0], 60
        a.work_root = a.work_root + "_quick"

    def overrides(ratio, seed, extra):
        ov = [f"seed={seed}", f"data.root={a.data_root}", f"data.labeled_list=splits/{ratio}/labeled.txt",
              f"data.unlabeled_list=splits/{ratio}/unlabeled.txt"]
        if a.iters:
            ov += [f"train.iters={a.iters}", f"train.ckpt_interval={a.iters}"]
        if a.quick:  # warm-ups scaled to the smoke run
            ov += ["cps.unsup_start_iter=20", "cps.rampup_iters=10", "cac.unsup_start_iter=20"]
        return ov + [*a.extra, *extra]  # later overrides win

    def truth(name):  # the semi-supervised runs log how right their pseudo labels are
        return [] if name == "labeled-only" else ["data.unlabeled_truth=true"]

    jobs = {}
    for ratio in a.ratios:
        for name in a.methods:
            config, extra = methods[name]
            for seed in a.seeds:
                wd = os.path.join(a.work_root, ratio, name.replace("+", "_"), f"seed{seed}")
                jobs[(name, ratio, seed)] = (name, config, overrides(ratio, seed, [*truth(name), *extra]), wd,
                                             a.threads)

    stored = load_store(a.store)
    if a.report_only:
        found = finished_runs(a.work_root)
        if a.store and any(k not in stored for k in found):  # runs trained by other calls join the store
            save_store(a.store, {**stored, **found})
        results = {k: v for k, v in {**stored, **found}.items() if k[1] in a.ratios and k[2] in a.seeds}
        if not results:
            sys.exit(f"ssl_digits: no finished runs under {a.work_root}")
        base_iters = statistics.mode(v["iteration"] for v in results.values())
        return report(a, results, base_iters)

    for ratio in a.ratios:
        split = os.path.join(ROOT, a.data_root, "splits", ratio, "labeled.txt")
        if not os.path.isfile(split):
            sys.exit(f"ssl_digits: {split} not found; build the set with: python datasets/build_digits.py "
                     f"{DATA_ROOT[a.suite][1]}--out {a.data_root}")
    results = {k: stored[k] for k in jobs if k in stored}
    jobs = {k: v for k, v in jobs.items() if k not in stored}
    t0 = time.time()

    def run_all(todo):
        with cf.ThreadPoolExecutor(max_workers=a.jobs) as pool:
            futures = {pool.submit(run_one, *args): key for key, args in todo.items()}
            for fut in cf.as_completed(futures):
                key = futures[fut]
                results[key] = fut.result()
                if a.store:
                    stored[key] = results[key]
                    save_store(a.store, stored)
                print(f"[{(time.time() - t0) / 60:6.1f} min] {key[0]:<14} {key[1]:<5} seed {key[2]}: "
                      f"mIoU {results[key]['mIoU']:.1f} in {results[key]['wall_s'] / 60:.1f} min", flush=True)

    run_all(jobs)

    base_iters = next(iter(results.values()))["iteration"]
    if not a.no_equal_wall and "labeled-only" in a.methods and len(a.methods) > 1:
        # labeled-only for as long as the slowest method took (mean over seeds, per ratio)
        extra_jobs = {}
        for ratio in a.ratios:
            walls = {n: statistics.mean(results[(n, ratio, s)]["wall_s"] for s in a.seeds) for n in a.methods}
            slowest = max(walls.values())
            iters = a.equal_wall_iters or math.ceil(base_iters * slowest / walls["labeled-only"])
            name = EQUAL_WALL
            for seed in a.seeds:
                if (EQUAL_WALL, ratio, seed) in stored:
                    results[(EQUAL_WALL, ratio, seed)] = stored[(EQUAL_WALL, ratio, seed)]
                    continue
                wd = os.path.join(a.work_root, ratio, f"sup_wall_{iters}", f"seed{seed}")
                extra_jobs[(name, ratio, seed)] = (name, methods["labeled-only"][0], overrides(
                    ratio, seed, [f"train.iters={iters}", f"train.ckpt_interval={iters}"]), wd, a.threads)
        run_all(extra_jobs)

    return report(a, results, base_iters)


def report(a, results: dict, base_iters: int) -> int:
    text = table(results, a.ratios, a.seeds, base_iters)
    collapsed = [f"{k[0]} {k[1]} seed {k[2]}" for k, v in results.items()
                 if max([x for x in v["IoU"][1:] if x is not None], default=0.0) < 1.0]
    print(text)
    if collapsed:
        print("collapsed to background (every foreground IoU < 1%):", ", ".join(collapsed))
    os.makedirs(a.work_root, exist_ok=True)
    with open(os.path.join(a.work_root, "results.json"), "w") as f:
        json.dump({" ".join(map(str, k)): v for k, v in results.items()}, f, indent=1)
    if a.write_readme:
        seeds = ", ".join(map(str, a.seeds))
        cmd = f"python benchmarks/ssl_digits.py --suite {a.suite}" + (" --quick" if a.quick else "")
        if a.ratios != DEFAULT_RATIOS[a.suite]:
            cmd += " --ratios " + " ".join(a.ratios)
        if a.methods != list(METHODS):
            cmd += " --methods " + " ".join(a.methods)
        if a.store:
            cmd += " --store " + os.path.relpath(a.store, ROOT)
        if a.extra:  # e.g. the memory format the stored runs trained with, where the configs' default changed
            cmd += " --extra " + " ".join(a.extra)
        wall_iters = sorted({v["iteration"] for k, v in results.items() if k[0] == EQUAL_WALL})
        if len(wall_iters) == 1:
            cmd += f" --equal-wall-iters {wall_iters[0]}"
        write_readme(f"Val mIoU (%), mean ± std over seeds {seeds} (n: how many of them a cell has); "
                     f"wall: each run's own wall time, mean over seeds; {base_iters} iterations unless "
                     f"noted; gain: difference of the means from labeled-only; pseudo labels right: "
                     f"share of true digit pixels the pseudo labels give the right class, first logged "
                     f"window after the warm-up -> last. Reproduce: `{cmd} --write-readme`.\n\n{text}",
                     a.suite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
