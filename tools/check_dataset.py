#!/usr/bin/env python
"""Scan the dataset of a config and report every problem at once, with counts and the labeled
class-frequency table. Exit status 1 when anything is wrong. Labels a datasets/ script has not made
yet, or has not converted (raw ADE20K, COCO category ids), are named with that script.

    python tools/check_dataset.py CONFIG [key=value ...] [--max-lines 50]
"""
import argparse
import sys

from _common import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--max-lines", type=int, default=50, help="problems printed (all are counted)")
    args = p.parse_intermixed_args(argv)
    from tqdm import tqdm

    from seg_ssl.config import load_config
    from seg_ssl.data.check import check_dataset
    from seg_ssl.data.classes import class_names

    cfg = load_config(args.config, args.overrides)
    d = cfg.data
    bar = (lambda it, desc: tqdm(it, desc=desc, leave=False)) if sys.stderr.isatty() else None
    report = check_dataset(d, bar)
    for split, n in report["counts"].items():
        print(f"{split}: {n} samples")
    total = report["class_pixels"].sum()
    if total:
        print("labeled class frequencies:")
        names = class_names(d.class_names, d.num_classes)
        for name, n in zip(names, report["class_pixels"].tolist(), strict=True):
            print(f"  {name:<16} {n:>12}  {100.0 * n / total:6.2f}%")
    problems = report["problems"]
    for line in problems[:args.max_lines]:
        print(f"problem: {line}")
    if len(problems) > args.max_lines:
        print(f"... and {len(problems) - args.max_lines} more")
    for line in report["hints"]:
        print(f"hint: {line}")
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    run_cli(main)
