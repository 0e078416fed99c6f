#!/usr/bin/env python
"""Make ADE20K's 150-class index PNGs, train/val lists and UniMatch V2's labeled/unlabeled splits.

    python datasets/prepare_ade20k.py --root data/ADEChallengeData2016 [--workers 4]

ROOT is the unzipped SceneParsing archive ``ADEChallengeData2016.zip`` (20,210 train and 2,000 val
images; not the full ADE20K release, which has no ``annotations/``):
``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``, whose values
are 0 = "other objects" (not scored) and 1..150 = the classes.

Writes, beside the archive's files (left untouched):
  annotations_150/{training,validation}/*.png   raw 0 -> 255 (ignore), raw k -> k-1: classes 0..149
  lists/{train,val}.txt                         "images/... annotations_150/..." lines, sorted
  splits/{1_64,1_32,1_16,1_8,1_4,1_2}/{labeled,unlabeled}.txt

The splits are UniMatch V2's ``splits/ade20k`` files line for line (with ``annotations_150/`` for
``annotations/``): the sorted training names shuffled by Python's ``random.Random(0)``, the first N
labeled and the rest unlabeled, in shuffled order (SemiVL's generator, which V2's lists follow; see
datasets/README.md). N is V2's count: 316 / 631 / 1,263 / 2,526 / 5,052 / 10,105. A training folder
of another size gets the same rule with N = ceil(size x fraction), said on stderr.

Each PNG is written under a temporary name and renamed when complete, and a finished one is skipped,
so an interrupted run is resumed by running the same command again.
"""
import argparse
import glob
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NUM_TRAIN = 20210
# labeled lines of UniMatch V2's splits/ade20k/<name>/labeled.txt; no one rounding rule gives them
# (20,210/64 = 315.8 -> 316 but 20,210/32 = 631.6 -> 631), so they are listed
V2_LABELED = {"1/64": 316, "1/32": 631, "1/16": 1263, "1/8": 2526, "1/4": 5052, "1/2": 10105}
OUT = "annotations_150"
SPLITS = {"training": "train", "validation": "val"}

# raw value -> 150-class index: 0 ("other objects") -> 255, k -> k-1; 151..255 never occur in the
# archive and are refused before the table is applied
TO_150 = np.concatenate([[255], np.arange(150), np.full(105, 255)]).astype(np.uint8)


def convert(job):
    """Write one 150-class PNG; returns None, or a problem line that names the file."""
    src, dst = job
    with Image.open(src) as im:
        if im.mode not in ("L", "P"):
            return f"{src}: mode {im.mode}, expected an 8-bit index PNG (mode L) of ADEChallengeData2016"
        raw = np.asarray(im)
    high = np.unique(raw[raw > 150]).tolist()
    if high:
        hint = (" (already converted? UniMatch V2's pre-processed annotations hold 0..149 and 255: use them "
                "as they are)" if high == [255] else "")
        return f"{src}: values {high[:10]} above 150; expected raw ADEChallengeData2016 values 0..150{hint}"
    partial = dst[:-len(".png")] + f".partial{os.getpid()}.png"  # PIL picks the format by suffix
    Image.fromarray(TO_150[raw], mode="L").save(partial)
    os.replace(partial, dst)
    return None


def v2_splits(train_rows: list[str], specs: list[str], seed: int = 0) -> dict:
    """``{name: (labeled rows, unlabeled rows)}`` by V2's rule (``shuffled_prefix_splits``) on the
    image names of ``"image label"`` rows; N is V2's count when the rows are the 20,210 training
    images, else ceil(rows x fraction). Checked: N labeled, and the two lists split the rows."""
    from seg_ssl.data.splits import labeled_count, shuffled_prefix_splits, split_name
    full = len(train_rows) == NUM_TRAIN
    counts = {split_name(s): V2_LABELED[s] if full and s in V2_LABELED else labeled_count(s, len(train_rows))
              for s in specs}
    by_name = {row.split()[0]: row for row in train_rows}
    out = {}
    for name, (lab, unl) in shuffled_prefix_splits(list(by_name), counts, seed).items():
        if len(lab) != counts[name] or len(lab) + len(unl) != len(train_rows) or set(lab) & set(unl):
            sys.exit(f"error: splits/{name}: {len(lab)} labeled + {len(unl)} unlabeled do not split "
                     f"the {len(train_rows)} training images into {counts[name]} labeled and the rest")
        out[name] = ([by_name[i] for i in lab], [by_name[i] for i in unl])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the ADEChallengeData2016 folder")
    p.add_argument("--splits", default="1/64,1/32,1/16,1/8,1/4,1/2")
    p.add_argument("--seed", type=int, default=0, help="V2's lists: 0")
    p.add_argument("--workers", type=int, default=4, help="processes; 0: convert in this one")
    args = p.parse_args(argv)
    from tqdm import tqdm

    from seg_ssl.data.splits import write_split, write_text_atomic

    for folder in ("images/training", "annotations/training", "images/validation", "annotations/validation"):
        if not os.path.isdir(os.path.join(args.root, folder)):
            sys.exit(f"error: {os.path.join(args.root, folder)} not found; expected the unzipped "
                     f"ADEChallengeData2016.zip: ROOT/images/{{training,validation}}/*.jpg and "
                     f"ROOT/annotations/{{training,validation}}/*.png (the full ADE20K release has no "
                     f"annotations/)")
    jobs, lines = [], {}
    for sub, split in SPLITS.items():
        out_dir = os.path.join(args.root, OUT, sub)
        os.makedirs(out_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(out_dir, "*.partial*.png")):
            os.remove(stale)  # what an interrupted run was writing
        rows, missing = [], []
        for img in sorted(glob.glob(os.path.join(args.root, "images", sub, "*.jpg"))):
            stem = os.path.basename(img)[:-len(".jpg")]
            src = os.path.join(args.root, "annotations", sub, stem + ".png")
            if not os.path.isfile(src):
                missing.append(os.path.relpath(img, args.root))
                continue
            dst = os.path.join(out_dir, stem + ".png")
            if not os.path.exists(dst):
                jobs.append((src, dst))
            rows.append(f"images/{sub}/{stem}.jpg {OUT}/{sub}/{stem}.png")
        if missing:
            print(f"warning: {len(missing)} {sub} image(s) have no annotation PNG and are not listed: "
                  f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}", file=sys.stderr)
        lines[split] = rows

    done = sum(len(r) for r in lines.values()) - len(jobs)
    bar = tqdm(total=len(jobs) + done, initial=done, desc="annotations", unit="png", disable=None)
    problems = []
    if args.workers > 0 and len(jobs) > 1:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for problem in pool.imap_unordered(convert, jobs, chunksize=64):
                problems += [problem] if problem else []
                bar.update()
    else:
        for job in jobs:
            problem = convert(job)
            problems += [problem] if problem else []
            bar.update()
    bar.close()
    if problems:
        for line in problems[:20]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(f"error: {len(problems)} annotation(s) not converted (first above); no lists written")
    print(f"{OUT}/: {len(jobs)} written, {done} already there")

    os.makedirs(os.path.join(args.root, "lists"), exist_ok=True)
    for split, rows in lines.items():
        write_text_atomic(os.path.join(args.root, "lists", f"{split}.txt"), "\n".join(rows) + "\n")
        print(f"lists/{split}.txt: {len(rows)} images")

    specs = [s.strip() for s in args.splits.split(",") if s.strip()]
    if len(lines["train"]) != NUM_TRAIN:
        print(f"warning: {len(lines['train'])} training images, not ADEChallengeData2016's {NUM_TRAIN:,}: "
              f"the splits follow V2's rule with ceil(count x fraction) labeled, but are not V2's lists",
              file=sys.stderr)
    for name, (lab, unl) in v2_splits(lines["train"], specs, args.seed).items():
        write_split(os.path.join(args.root, "splits", name), lab, unl)
        v2 = len(lines["train"]) == NUM_TRAIN and name.replace("_", "/") in V2_LABELED
        print(f"splits/{name}: {len(lab)} labeled, {len(unl)} unlabeled" + (" (UniMatch V2's)" if v2 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
