#!/usr/bin/env python
"""Make COCO's 81-class index PNGs (background + the 80 thing classes), lists and splits.

    pip install -e .[coco]
    python datasets/prepare_coco.py --root data/coco [--workers 4] [--splits-from UniMatch/splits/coco]

ROOT holds the official archives unzipped: ``train2017/*.jpg`` (118,287), ``val2017/*.jpg`` (5,000)
and ``annotations/instances_{train,val}2017.json`` (from annotations_trainval2017.zip).

Writes:
  masks/<12-digit id>.png        one per image of both JSON files, annotated or not (the layout of
                                 UniMatch's masks: one flat folder for train and val)
  lists/{train,val}.txt          "train2017/<id>.jpg masks/<id>.png" lines (UniMatch's format), by id
  splits/<name>/{labeled,unlabeled}.txt   with --splits-from: each <name>/labeled.txt found there
                                 (UniMatch's splits/coco: 1_512 ... 1_32), in its order; unlabeled =
                                 every other train2017 image, by id

Mask values: 0 = background; 1..80 = the COCO category ids 1..90 without the ten unused ones, in
ascending order. Overlaps and crowds (--overlap, datasets/README.md): ``last`` (default) paints each
annotation in the JSON's order over the ones before it, crowd regions with their class, and writes
no 255; ``ignore`` (torchvision's rule) makes every pixel covered by two or more annotations 255.
Polygon parts of fewer than three points enclose nothing and are skipped.

One process reads a JSON file and sends each worker one image's annotations at a time, so memory
does not grow with the number of images. Each PNG is written under a temporary name and renamed
when complete; a finished one is skipped, so the same command resumes an interrupted run.
"""
import argparse
import glob
import os
import re
import resource
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
THING_IDS = [i for i in range(1, 91) if i not in UNUSED_IDS]
TO_INDEX = {cat: k for k, cat in enumerate(THING_IDS, 1)}
# the names of instances_*2017.json, in id order
NAMES = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
         "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
         "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
         "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
         "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
         "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
         "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
         "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
         "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"]
NUM_TRAIN = 118287
# labeled lines of UniMatch's (= PseudoSeg's) splits/coco/<name>/labeled.txt: ceil(118,287 / k)
PUBLISHED = {"1_512": 232, "1_256": 463, "1_128": 925, "1_64": 1849, "1_32": 3697}
SETS = ("train2017", "val2017")


def decode(segmentation, h: int, w: int) -> np.ndarray:
    """An annotation's HxW 0/1 mask: polygon parts merged, uncompressed (crowd) RLE converted, RLE
    decoded, all by pycocotools."""
    from pycocotools import mask as mask_utils
    if isinstance(segmentation, list):
        # a part of 4 numbers would be read as a box by frPyObjects: parts under 3 points are dropped
        parts = [p for p in segmentation if len(p) >= 6]
        if not parts:
            return np.zeros((h, w), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(parts, h, w))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def paint(h: int, w: int, annotations, overlap: str = "last") -> np.ndarray:
    """The 81-class mask of one image from ``[(class index, segmentation), ...]`` in JSON order."""
    # column-major like pycocotools' decoded masks: painting walks both in memory order
    out = np.zeros((h, w), np.uint8, order="F")
    covered = np.zeros((h, w), np.uint8, order="F") if overlap == "ignore" else None
    for index, segmentation in annotations:
        m = decode(segmentation, h, w).view(bool)  # 0/1 bytes
        np.copyto(out, index, where=m)
        if covered is not None:
            np.add(covered, 1, out=covered, where=m & (covered < 2))
    if covered is not None:
        out[covered > 1] = 255
    return np.ascontiguousarray(out)


def work(task):
    """Write one mask; returns a problem line (the image is missing or of another size) or None."""
    image_path, mask_path, h, w, annotations, overlap = task
    partial = mask_path[:-len(".png")] + f".partial{os.getpid()}.png"  # PIL picks the format by suffix
    # zlib level 1: ~40% less encoding time than the default 6 for files ~1.5x larger (a few KB)
    Image.fromarray(paint(h, w, annotations, overlap), mode="L").save(partial, compress_level=1)
    os.replace(partial, mask_path)
    if not os.path.isfile(image_path):
        return f"{image_path}: listed in the annotation file but missing"
    with Image.open(image_path) as im:  # the header only
        if im.size != (w, h):
            return f"{image_path} is {im.size[0]}x{im.size[1]} but its annotation record says {w}x{h}"
    return None


def tasks(coco, root: str, set_name: str, todo: list, overlap: str):
    """One image's work at a time, from the index: nothing is built for the images in advance."""
    for img in todo:
        anns = [(TO_INDEX[a["category_id"]], a["segmentation"]) for a in coco.imgToAnns.get(img["id"], [])]
        mask = os.path.join(root, "masks", f"{img['id']:012d}.png")
        yield os.path.join(root, set_name, img["file_name"]), mask, img["height"], img["width"], anns, overlap


def load_index(path: str):
    """pycocotools' index of one instances JSON, its categories checked against the 80 thing ids."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):  # its "loading annotations..." lines
        coco = COCO(path)
    for cat in coco.dataset.get("categories", []):
        if cat["id"] not in TO_INDEX:
            sys.exit(f"error: {path}: category id {cat['id']} ({cat.get('name')!r}) is not one of COCO's 80 "
                     f"thing ids (1..90 without {', '.join(map(str, UNUSED_IDS))}); expected "
                     f"instances_*2017.json")
        if cat.get("name") != NAMES[TO_INDEX[cat["id"]] - 1]:
            print(f"warning: {path}: category {cat['id']} is named {cat.get('name')!r}, COCO 2017's "
                  f"{NAMES[TO_INDEX[cat['id']] - 1]!r}", file=sys.stderr)
    bad = sorted({a["category_id"] for a in coco.dataset.get("annotations", [])} - set(TO_INDEX))
    if bad:
        sys.exit(f"error: {path}: annotations of category ids {bad[:10]} outside COCO's 80 thing ids")
    return coco


def read_labeled(path: str, train_ids: set) -> list[int]:
    """Image ids of a published labeled list (``train2017/<id>.jpg masks/<id>.png``, or PseudoSeg's
    ``train2017/<id>``), in its order."""
    ids = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = re.fullmatch(r"train2017/(\d{12})(\.jpg)?(\s+masks/\1\.png)?", line.strip())
            if not m:
                sys.exit(f"error: {path}:{lineno}: {line.strip()!r}; expected 'train2017/<12-digit id>.jpg "
                         f"masks/<12-digit id>.png' (UniMatch's splits/coco lists)")
            if int(m.group(1)) not in train_ids:
                sys.exit(f"error: {path}:{lineno}: image {m.group(1)} is not in instances_train2017.json")
            ids.append(int(m.group(1)))
    if len(set(ids)) != len(ids):
        sys.exit(f"error: {path}: an image is listed twice")
    return ids


def peak_mib(who) -> int:
    """Peak resident memory (Linux reports KiB) of this process or of its largest finished child."""
    return resource.getrusage(who).ru_maxrss // 1024


def line(set_name: str, image_id: int) -> str:
    return f"{set_name}/{image_id:012d}.jpg masks/{image_id:012d}.png"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the folder holding train2017/, val2017/ and annotations/")
    p.add_argument("--splits-from", help="UniMatch's splits/coco folder: <name>/labeled.txt for each split")
    p.add_argument("--overlap", choices=["last", "ignore"], default="last",
                   help="last: later annotations paint over earlier ones; ignore: overlaps are 255")
    p.add_argument("--workers", type=int, default=4, help="processes; 0: convert in this one")
    args = p.parse_args(argv)
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        sys.exit("error: pycocotools is not installed; pip install -e .[coco]")
    from tqdm import tqdm

    from seg_ssl.data.splits import write_split, write_text_atomic

    jsons = {s: os.path.join(args.root, "annotations", f"instances_{s}.json") for s in SETS}
    for path in [os.path.join(args.root, s) for s in SETS] + list(jsons.values()):
        if not os.path.exists(path):
            sys.exit(f"error: {path} not found; expected ROOT/train2017/*.jpg, ROOT/val2017/*.jpg and "
                     f"ROOT/annotations/instances_{{train,val}}2017.json (annotations_trainval2017.zip)")
    masks = os.path.join(args.root, "masks")
    os.makedirs(masks, exist_ok=True)
    for stale in glob.glob(os.path.join(masks, "*.partial*.png")):
        os.remove(stale)  # what an interrupted run was writing
    ids, problems = {}, []
    pool = None
    if args.workers > 0:
        import multiprocessing
        # spawned workers: a forked one would share the parent's annotation index and copy it page
        # by page as its garbage collector touches the objects
        pool = multiprocessing.get_context("spawn").Pool(args.workers)
    try:
        for set_name in SETS:
            coco = load_index(jsons[set_name])
            images = sorted(coco.dataset["images"], key=lambda i: i["id"])
            ids[set_name] = [i["id"] for i in images]
            todo = [i for i in images if not os.path.exists(os.path.join(masks, f"{i['id']:012d}.png"))]
            start = time.perf_counter()
            bar = tqdm(total=len(images), initial=len(images) - len(todo), desc=set_name, unit="mask",
                       disable=None)
            jobs = tasks(coco, args.root, set_name, todo, args.overlap)
            for problem in (pool.imap_unordered(work, jobs, chunksize=16) if pool else map(work, jobs)):
                problems += [problem] if problem else []
                bar.update()
            bar.close()
            rate = f" ({1000 * (time.perf_counter() - start) / len(todo):.1f} ms per mask)" if todo else ""
            print(f"masks/ ({set_name}): {len(todo)} written, {len(images) - len(todo)} already there{rate}")
            del coco, images, todo
    finally:
        if pool:
            pool.close()
            pool.join()
    workers = f", {peak_mib(resource.RUSAGE_CHILDREN)} MiB in the largest worker" if pool else ""
    print(f"peak memory: {peak_mib(resource.RUSAGE_SELF)} MiB in this process (the annotation index)"
          + workers)
    if problems:
        for text in problems[:20]:
            print(f"error: {text}", file=sys.stderr)
        sys.exit(f"error: {len(problems)} image(s) missing or of another size than their record (first "
                 f"above); the masks are written, no lists")

    os.makedirs(os.path.join(args.root, "lists"), exist_ok=True)
    for set_name, split in (("train2017", "train"), ("val2017", "val")):
        write_text_atomic(os.path.join(args.root, "lists", f"{split}.txt"),
                          "\n".join(line(set_name, i) for i in ids[set_name]) + "\n")
        print(f"lists/{split}.txt: {len(ids[set_name])} images")
    if not args.splits_from:
        return 0
    train_ids = set(ids["train2017"])
    found = sorted(glob.glob(os.path.join(args.splits_from, "*", "labeled.txt")))
    if not found:
        sys.exit(f"error: --splits-from {args.splits_from}: no <name>/labeled.txt in it; expected UniMatch's "
                 f"splits/coco folder (1_512/labeled.txt ... 1_32/labeled.txt)")
    for path in found:
        name = os.path.basename(os.path.dirname(path))
        labeled = read_labeled(path, train_ids)
        if len(train_ids) == NUM_TRAIN and name in PUBLISHED and len(labeled) != PUBLISHED[name]:
            sys.exit(f"error: {path} lists {len(labeled)} images; UniMatch's {name} lists {PUBLISHED[name]}")
        chosen = set(labeled)
        write_split(os.path.join(args.root, "splits", name), [line("train2017", i) for i in labeled],
                    [line("train2017", i) for i in ids["train2017"] if i not in chosen])
        print(f"splits/{name}: {len(labeled)} labeled, {len(train_ids) - len(labeled)} unlabeled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
