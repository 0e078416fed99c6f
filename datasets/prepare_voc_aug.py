#!/usr/bin/env python
"""Make VOC2012 SegmentationClassAug (10,582 train_aug) from the SBD release.

    python datasets/prepare_voc_aug.py --voc data/VOCdevkit/VOC2012 --sbd data/benchmark_RELEASE

Reads SBD ``dataset/cls/*.mat`` (GTcls.Segmentation) and VOC ``SegmentationClass/*.png`` (palette
PNGs; their index values are the classes, 255 the void border), writes index PNGs to
``VOC2012/SegmentationClassAug/`` (VOC's own masks win where both exist), and lists
``ImageSets/Segmentation/train_aug.txt`` = (VOC train + SBD train + SBD val) - VOC val.
Then draw labeled splits: ``python tools/make_splits.py --list .../train_aug.txt --out VOC2012/splits``.
"""
import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image


def read_ids(path):
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip()]


def convert_mat(args):
    mat_path, out_path = args
    from scipy.io import loadmat
    seg = loadmat(mat_path)["GTcls"][0]["Segmentation"][0].astype(np.uint8)
    Image.fromarray(seg, mode="L").save(out_path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc", required=True, help="VOCdevkit/VOC2012")
    p.add_argument("--sbd", required=True, help="SBD benchmark_RELEASE folder")
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args()
    sets = os.path.join(args.voc, "ImageSets", "Segmentation")
    sbd = os.path.join(args.sbd, "dataset")
    need = [os.path.join(sets, "train.txt"), os.path.join(sets, "val.txt"),
            os.path.join(sbd, "train.txt"), os.path.join(sbd, "val.txt"), os.path.join(sbd, "cls")]
    for n in need:
        if not os.path.exists(n):
            sys.exit(f"error: {n} not found; expected VOC2012/ImageSets/Segmentation/{{train,val}}.txt "
                     f"and benchmark_RELEASE/dataset/{{train.txt,val.txt,cls/}}")
    voc_train, voc_val = read_ids(need[0]), read_ids(need[1])
    sbd_ids = read_ids(need[2]) + read_ids(need[3])
    val = set(voc_val)
    train_aug = sorted((set(voc_train) | set(sbd_ids)) - val)
    out_dir = os.path.join(args.voc, "SegmentationClassAug")
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(os.path.join(sbd, "cls", i + ".mat"), os.path.join(out_dir, i + ".png"))
            for i in sorted(set(sbd_ids) - set(voc_train) - val)]
    with ProcessPoolExecutor(args.workers) as ex:
        list(ex.map(convert_mat, jobs, chunksize=64))
    for i in voc_train + voc_val:  # VOC's own masks (train and val), as index PNGs
        arr = np.asarray(Image.open(os.path.join(args.voc, "SegmentationClass", i + ".png")))
        Image.fromarray(arr.astype(np.uint8), mode="L").save(os.path.join(out_dir, i + ".png"))
    with open(os.path.join(sets, "train_aug.txt"), "w") as f:
        f.write("\n".join(train_aug) + "\n")
    print(f"SegmentationClassAug: {len(jobs) + len(voc_train) + len(voc_val)} masks; "
          f"train_aug.txt: {len(train_aug)} ids (10,582 expected)")


if __name__ == "__main__":
    main()
