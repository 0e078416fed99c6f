#!/usr/bin/env python
"""Make Cityscapes ``*_gtFine_labelTrainIds.png`` (19 classes, 255 ignore) and split lists.

    pip install -e .[cityscapes]
    python datasets/prepare_cityscapes.py --root data/cityscapes [--splits 1/16,1/8,1/4,1/2]

Uses ``cityscapesscripts``' json2labelImg (the official trainId mapping) on every
``gtFine/*/*/*_polygons.json``; writes ``lists/{train,val}.txt`` ("image label" lines relative to the
root) and nested labeled/unlabeled splits of train under ``splits/``. An image without its polygons
JSON is left out of the lists (and named). Each label image is written under a temporary name and
renamed when complete, so an interrupted run leaves no half-written label that a re-run would keep.
"""
import argparse
import glob
import os
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def to_train_ids(json_path):
    from cityscapesscripts.preparation.json2labelImg import json2labelImg
    out = json_path.replace("_polygons.json", "_labelTrainIds.png")
    if not os.path.exists(out):
        partial = out[:-len(".png")] + f".partial{os.getpid()}.png"  # PIL picks the format by suffix
        json2labelImg(json_path, partial, "trainIds")
        os.replace(partial, out)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True)
    p.add_argument("--splits", default="1/16,1/8,1/4,1/2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args()
    try:
        import cityscapesscripts  # noqa: F401
    except ImportError:
        sys.exit("error: cityscapesscripts is not installed; pip install -e .[cityscapes]")
    from seg_ssl.data.splits import nested_splits, write_split, write_text_atomic
    for sub in ("leftImg8bit", "gtFine"):
        if not os.path.isdir(os.path.join(args.root, sub)):
            sys.exit(f"error: {os.path.join(args.root, sub)} not found; expected "
                     f"ROOT/leftImg8bit/{{train,val}}/<city>/*.png and ROOT/gtFine/...")
    for stale in glob.glob(os.path.join(args.root, "gtFine", "*", "*", "*_labelTrainIds.partial*.png")):
        os.remove(stale)  # what an interrupted run was writing
    jsons = sorted(glob.glob(os.path.join(args.root, "gtFine", "*", "*", "*_gtFine_polygons.json")))
    with ProcessPoolExecutor(args.workers) as ex:
        list(ex.map(to_train_ids, jsons, chunksize=16))
    os.makedirs(os.path.join(args.root, "lists"), exist_ok=True)
    lines = {}
    for split in ("train", "val"):
        imgs = sorted(glob.glob(os.path.join(args.root, "leftImg8bit", split, "*", "*_leftImg8bit.png")))
        rows, unlabeled = [], []
        for img in imgs:
            rel = os.path.relpath(img, args.root)
            lab = rel.replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit.png",
                                                                    "_gtFine_labelTrainIds.png")
            if os.path.isfile(os.path.join(args.root, lab)):
                rows.append(f"{rel} {lab}")
            else:  # no polygons JSON, so no label: listing it would fail the first run that draws it
                unlabeled.append(rel)
        lines[split] = rows
        write_text_atomic(os.path.join(args.root, "lists", f"{split}.txt"), "\n".join(rows) + "\n")
        print(f"lists/{split}.txt: {len(rows)} images")
        if unlabeled:
            print(f"warning: {len(unlabeled)} {split} image(s) have no gtFine polygons JSON and are not "
                  f"listed: {', '.join(unlabeled[:3])}{' ...' if len(unlabeled) > 3 else ''}",
                  file=sys.stderr)
    for name, (lab, unl) in nested_splits(lines["train"], args.splits.split(","), args.seed).items():
        write_split(os.path.join(args.root, "splits", name), lab, unl)
        print(f"splits/{name}: {len(lab)} labeled, {len(unl)} unlabeled")


if __name__ == "__main__":
    main()
