#!/usr/bin/env python
"""Print the metrics of several runs side by side (per-class IoU, mIoU, aAcc, mAcc).

    python tools/compare.py runs/demo/sup/metrics.json runs/demo/unimatch/metrics.json \
        [--names labeled-only UniMatch] [--config configs/digits_lite0_sup.yaml]

Each file is what ``tools/eval.py --out`` or a run's ``metrics.json`` holds. The rows are named by
``--config``'s class names, else by the names a file holds (``tools/eval.py --out`` writes them), else
by the resolved ``config.yaml`` beside a run's ``metrics.json``; the last column is the last run
minus the first. Files scored under different evaluation protocols are named below the table.
"""
import argparse
import json
import os

from _common import run_cli


def column_names(paths: list[str]) -> list[str]:
    """A short, distinct title per file: its folder (a run's name), or as many trailing path parts
    as it takes to tell the files apart (two files of one folder: ``run/a``, ``run/b``)."""
    parts = [os.path.splitext(os.path.abspath(p))[0].split(os.sep)[1:] for p in paths]
    names = [p[-2] if len(p) > 1 else p[-1] for p in parts]
    depth = 1
    while len(set(names)) < len(names) and depth < max(len(p) for p in parts):
        depth += 1
        names = ["/".join(p[-depth:]) for p in parts]
    return names


def class_names_beside(paths: list[str], runs: list[dict]):
    """Class names from the metrics files themselves, or from a run's config.yaml next to one."""
    import yaml
    for m in runs:
        if m.get("class_names"):
            return m["class_names"]
    for path in paths:
        cfg = os.path.join(os.path.dirname(os.path.abspath(path)), "config.yaml")
        if os.path.isfile(cfg):
            with open(cfg) as f:
                names = ((yaml.safe_load(f) or {}).get("data") or {}).get("class_names")
            if names:
                return names
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", nargs="+", help="JSON files from tools/eval.py --out or metrics.json")
    p.add_argument("--names", nargs="+", help="a column title per file (default: the file's folder)")
    p.add_argument("--config", help="a config whose data.class_names label the rows")
    args = p.parse_args(argv)
    from seg_ssl.errors import ConfigError
    from seg_ssl.evaluation.metrics import format_comparison
    if args.names and len(args.names) != len(args.metrics):
        raise ConfigError(f"--names has {len(args.names)} titles for {len(args.metrics)} files")
    if args.names and len(set(args.names)) < len(args.names):
        raise ConfigError(f"--names {' '.join(args.names)}: give each file its own title")
    names = args.names or column_names(args.metrics)
    runs = {}
    for name, path in zip(names, args.metrics, strict=True):
        try:
            with open(path) as f:
                m = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read metrics ({e})") from None
        if not all(k in m for k in ("IoU", "mIoU", "aAcc", "mAcc")):
            raise ConfigError(f"{path}: not a metrics file (expected the keys IoU, mIoU, aAcc, mAcc)")
        runs[name] = m
    if args.config:  # the config (and with it torch and the methods) only when asked for
        from seg_ssl.config import load_config
        classes = load_config(args.config).data.class_names
    else:
        classes = class_names_beside(args.metrics, list(runs.values()))
    try:
        print(format_comparison(runs, classes))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    protocols = {name: m.get("protocol") for name, m in runs.items()}
    if len({json.dumps(p, sort_keys=True) for p in protocols.values()}) > 1:
        from seg_ssl.evaluation.protocols import describe
        print("note: these were scored under different protocols; re-score with tools/eval.py CONFIG CKPT "
              "eval.mode=... to compare like with like:")
        for name, p in protocols.items():
            print(f"  {name}: {describe(p) if p else 'not recorded'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
