#!/usr/bin/env python
"""Speed and memory of datasets/prepare_coco.py on a synthetic COCO of N images.

    python benchmarks/coco_masks.py --images 2000 4000 --workers 2

Each image is 640x480 with 7 instances (COCO train2017 averages 7.3): six polygons of 24 points and
one crowd region as uncompressed RLE, over the 80 categories. The JPEGs are tiny grey files of the
right size (the script reads their header only). For each N the conversion runs once in a fresh
folder; a Markdown row gives the ms per mask it prints (train2017's wall time over its masks) and
the peak memory of the process holding the index and of the largest worker. Flat memory: the
worker's peak does not grow with N.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "datasets"))
from prepare_coco import NAMES, THING_IDS  # noqa: E402

H, W = 480, 640


def polygon(rng):
    cx, cy = rng.uniform(60, W - 60), rng.uniform(60, H - 60)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 24))
    radius = rng.uniform(20, 120) * rng.uniform(0.6, 1.0, 24)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1).clip(0, [W - 1, H - 1])


def crowd(rng):
    """A box of rows y0..y1 in columns x0..x1 as column-major runs."""
    x0, y0 = int(rng.integers(0, W - 100)), int(rng.integers(0, H - 100))
    x1, y1 = x0 + int(rng.integers(20, 100)), y0 + int(rng.integers(20, 100))
    counts = [x0 * H + y0]
    for _ in range(x0, x1 - 1):
        counts += [y1 - y0, H - (y1 - y0)]
    counts += [y1 - y0, H * W - sum(counts) - (y1 - y0)]
    return {"counts": counts, "size": [H, W]}


def make(root: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "annotations"))
    grey = Image.new("RGB", (W, H), (128, 128, 128))
    for set_name, ids in (("train2017", range(1, n + 1)), ("val2017", range(n + 1, n + 2))):
        os.makedirs(os.path.join(root, set_name))
        images, anns = [], []
        for i in ids:
            grey.save(os.path.join(root, set_name, f"{i:012d}.jpg"), quality=10)
            images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W})
            for k in range(7):
                seg, iscrowd = (crowd(rng), 1) if k == 6 else ([polygon(rng).ravel().round(2).tolist()], 0)
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.choice(THING_IDS)),
                             "segmentation": seg, "iscrowd": iscrowd, "area": 1.0, "bbox": [0, 0, 1, 1]})
        cats = [{"id": c, "name": name} for c, name in zip(THING_IDS, NAMES, strict=True)]
        with open(os.path.join(root, "annotations", f"instances_{set_name}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": cats}, f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, nargs="+", default=[2000, 4000])
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    print("| images | JSON MiB | workers | ms per mask | peak MiB, index process "
          "| peak MiB, largest worker |")
    print("|---|---|---|---|---|---|")
    for n in args.images:
        with tempfile.TemporaryDirectory() as tmp:
            make(tmp, n)
            size = os.path.getsize(os.path.join(tmp, "annotations", "instances_train2017.json")) / 2 ** 20
            cmd = [sys.executable, os.path.join(ROOT, "datasets", "prepare_coco.py"), "--root", tmp,
                   "--workers", str(args.workers)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                sys.exit(r.stderr)
            ms = re.search(r"masks/ \(train2017\): \d+ written.*\(([\d.]+) ms per mask\)", r.stdout).group(1)
            peak = re.search(r"peak memory: (\d+) MiB in this process[^,]*"
                             r"(?:, (\d+) MiB in the largest worker)?", r.stdout)
            worker = peak.group(2) or "-"
            print(f"| {n:,} | {size:.0f} | {args.workers} | {ms} | {peak.group(1)} | {worker} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
