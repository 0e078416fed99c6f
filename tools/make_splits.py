#!/usr/bin/env python
"""Draw reproducible, nested labeled/unlabeled splits from a train list.

    python tools/make_splits.py --list ROOT/ImageSets/Segmentation/train_aug.txt --out ROOT/splits \
        --splits 1/16,1/8,1/4,1/2,92,183,366 --seed 0

Writes OUT/<name>/labeled.txt and unlabeled.txt (name 1_16, 1_8, ..., 92). One seeded permutation
of the list: every labeled set is its prefix, so 1/16 is inside 1/8 is inside 1/4; unlabeled is the
complement. Fractions round up (10,582 -> 662, 1,323, 2,646, 5,291, as the CPS lists).
"""
import argparse
import os

from _common import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", required=True, help="train list: one id (or 'image label') per line")
    p.add_argument("--out", required=True)
    p.add_argument("--splits", default="1/16,1/8,1/4,1/2")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from seg_ssl.data.splits import nested_splits, write_split
    from seg_ssl.errors import ConfigError
    if not os.path.isfile(args.list):
        raise ConfigError(f"--list {args.list}: no such file")
    with open(args.list) as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    try:
        splits = nested_splits(lines, [s.strip() for s in args.splits.split(",") if s.strip()], args.seed)
    except ValueError as e:
        raise ConfigError(f"--list {args.list}: {e}") from None
    for name, (lab, unl) in splits.items():
        write_split(os.path.join(args.out, name), lab, unl)
        print(f"{name}: {len(lab)} labeled, {len(unl)} unlabeled -> {os.path.join(args.out, name)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
