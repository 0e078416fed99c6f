"""Scan a dataset for every problem at once (``tools/check_dataset.py``)."""
from __future__ import annotations

import os
import numpy as np

from seg_ssl.data.dataset import load_image, load_label, preparation_script, read_split, resolve_list
from seg_ssl.errors import DataError


def check_dataset(d, progress=None) -> dict:
    """Returns ``{"problems": [str, ...], "hints": [str, ...], "counts": {split: n},
    "class_pixels": np.ndarray}``.

    Checks the root and split lists, duplicate ids, ids without image or label, unreadable images,
    label values outside the classes and the ignore index, image/label size mismatches, empty
    splits and labeled/unlabeled overlap. Labels missing beside their images, of a layout that a
    datasets/ script writes, get a hint naming the script; 150-class labels without one ignored pixel
    among them are a problem naming ADE20K's raw annotations (its "other" is 255 once converted, in
    nearly every image)."""
    problems: list[str] = []
    missing_labels: list[str] = []
    labels_read = labels_with_ignore = 0
    counts: dict = {}
    class_pixels = np.zeros(d.num_classes, np.int64)
    if not os.path.isdir(d.root):
        problems.append(f"data.root {d.root!r} is not a directory; expected root/{d.img_dir}/*{d.img_suffix}, "
                        f"root/{d.ann_dir}/*{d.ann_suffix} and split lists")
        return {"problems": problems, "hints": [], "counts": counts, "class_pixels": class_pixels}
    ids = {}
    for split, key in (("labeled", "labeled_list"), ("unlabeled", "unlabeled_list"), ("val", "val_list")):
        if not d[key]:
            continue
        path = resolve_list(d.root, d[key])
        listed: list[str] = []  # duplicate ids and bad lines: reported, and the scan goes on
        try:
            samples = read_split(path, d.root, d.img_dir, d.ann_dir, d.img_suffix, d.ann_suffix,
                                 need_labels=split != "unlabeled", problems=listed)
        except DataError as e:
            problems.append(f"data.{key}: {e}")
            continue
        problems += [f"data.{key}: {p}" for p in listed]
        counts[split] = len(samples)
        ids[split] = {s.id for s in samples}
        for s in (progress(samples, desc=split) if progress else samples):
            try:
                image = load_image(s.image)
            except DataError as e:
                problems.append(str(e))
                image = None
            if split == "unlabeled":
                continue
            if image is not None and not os.path.isfile(s.label):  # the image is there, its label not
                missing_labels.append(s.label)
            try:
                label = load_label(s.label, d.num_classes, d.ignore_index)
            except DataError as e:
                problems.append(str(e))
                continue
            labels_read += 1
            labels_with_ignore += bool((label == d.ignore_index).any())
            if image is not None and label.shape != image.shape[:2]:
                problems.append(f"image {s.image} is {image.shape[1]}x{image.shape[0]} but label {s.label} "
                                f"is {label.shape[1]}x{label.shape[0]}")
            if split == "labeled":
                class_pixels += np.bincount(label[label != d.ignore_index].ravel(),
                                            minlength=d.num_classes)[:d.num_classes]
    hints = []
    script = next((preparation_script(p) for p in missing_labels if preparation_script(p)), None)
    if script:
        hints.append(f"{len(missing_labels)} label file(s) missing beside their images "
                     f"(e.g. {missing_labels[0]}): {script} writes them")
    if d.num_classes == 150 and labels_read and not labels_with_ignore:
        problems.append(f"none of the {labels_read} labels read has an ignored pixel ({d.ignore_index}): "
                        f"raw ADE20K annotations (0 = other, 1..150 = the classes)? "
                        f"datasets/prepare_ade20k.py converts them (0 -> {d.ignore_index}, k -> k-1)")
    both = ids.get("labeled", set()) & ids.get("unlabeled", set())
    if both and not d.allow_overlap:
        problems.append(f"{len(both)} ids are in both the labeled and the unlabeled list (e.g. {sorted(both)[:3]}); "
                        f"set data.allow_overlap=true if that is intended")
    leak = ids.get("val", set()) & (ids.get("labeled", set()) | ids.get("unlabeled", set()))
    if leak:
        problems.append(f"{len(leak)} val ids are also training ids (e.g. {sorted(leak)[:3]})")
    return {"problems": problems, "hints": hints, "counts": counts, "class_pixels": class_pixels}

