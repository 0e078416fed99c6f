#!/usr/bin/env python
"""Build the embedded digits dataset (VOC layout) from scikit-learn's bundled digits; no download.

    python datasets/build_digits.py [--out data/digits] [--train 3000] [--val 500] [--seed 0]
                                    [--rendering default|clean] [--splits 1/16,1/8]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/digits")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rendering", default="default", choices=["default", "clean"],
                   help="clean: fewer, larger, non-overlapping digits, less noise (the pretrained benchmark)")
    p.add_argument("--splits", default=None,
                   help="comma-separated labeled splits, fractions or counts (default: 1/32,125,1/16,250,1/8 "
                        "for the clean rendering, 1/16,1/8 otherwise)")
    p.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    args = p.parse_args()
    from seg_ssl.data.digits import DEFAULT_SPLITS, RENDERINGS, build_digits, built_stamp
    from seg_ssl.data.splits import labeled_count, split_name
    splits = args.splits.split(",") if args.splits else list(DEFAULT_SPLITS[args.rendering])
    for spec in splits:
        try:
            labeled_count(spec, args.train)
        except ValueError as e:
            p.error(f"--splits: {e}")
    marker = os.path.join(args.out, ".complete")
    stamp = built_stamp(args.train, args.val, args.seed, args.rendering)
    have_splits = all(os.path.isfile(os.path.join(args.out, "splits", split_name(s), "labeled.txt"))
                      for s in splits)
    if not args.force and have_splits and os.path.isfile(marker) and open(marker).read().strip() == stamp:
        print(f"{args.out} is already built ({stamp}); --force rebuilds")
        return
    t0 = time.time()
    counts = build_digits(args.out, args.train, args.val, args.seed, splits=splits,
                          **RENDERINGS[args.rendering])
    with open(marker, "w") as f:
        f.write(stamp + "\n")
    print(f"wrote {args.out} in {time.time() - t0:.1f}s: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
