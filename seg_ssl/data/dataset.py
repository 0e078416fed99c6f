"""Segmentation datasets in the VOC folder layout (and any layout given by ``image label`` lists).

A split list has one sample per line: an id (``2007_000032``: CPS and U2PL's VOC lists), resolved
as ``root/img_dir/<id><img_suffix>`` and ``root/ann_dir/<id><ann_suffix>``; two paths relative to
the root (``JPEGImages/x.jpg SegmentationClass/x.png``: UniMatch, CPS Cityscapes); or one image
path (``leftImg8bit/train/x/y_leftImg8bit.png``: U2PL's Cityscapes lists) whose label path follows
from ``img_dir``/``ann_dir`` and the suffixes. Labels are index PNGs; 255 is ignored.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from seg_ssl.errors import ConfigError, DataError


@dataclass(frozen=True)
class Sample:
    id: str
    image: str
    label: str | None


def label_path_for(image_rel: str, img_dir: str, ann_dir: str, img_suffix: str, ann_suffix: str) -> str:
    """The label of an image path relative to the root: the ``img_dir`` folder becomes ``ann_dir``
    and the ``img_suffix`` ending becomes ``ann_suffix`` (Cityscapes:
    ``leftImg8bit/train/x/y_leftImg8bit.png`` -> ``gtFine/train/x/y_gtFine_labelTrainIds.png``)."""
    parts = image_rel.split("/")
    if img_dir in parts:
        parts[parts.index(img_dir)] = ann_dir
    name = parts[-1]
    parts[-1] = name[:-len(img_suffix)] + ann_suffix if name.endswith(img_suffix) else \
        os.path.splitext(name)[0] + ann_suffix
    return "/".join(parts)


def read_split(list_path: str, root: str, img_dir: str, ann_dir: str, img_suffix: str,
               ann_suffix: str, need_labels: bool = True, problems: list | None = None) -> list[Sample]:
    """Parse a split list into samples; checks the list exists, is non-empty and has no duplicates.
    With a ``problems`` list, a bad line or a duplicate id is appended there and skipped (the first
    occurrence kept) instead of raised, so that a scan can report everything at once."""
    if not os.path.isfile(list_path):
        raise DataError(f"split list not found: {list_path}")
    samples, seen = [], {}
    pair_hint = (f"a line is one id (2007_000032) or an image and its label relative to the root, "
                 f"separated by a space ({img_dir}/2007_000032{img_suffix} {ann_dir}/2007_000032{ann_suffix})")
    # utf-8-sig drops a byte-order mark at the start (Windows editors write one); one inside the
    # file (lists concatenated) is dropped too: it is never part of a file name, and kept it would
    # make "JPEGImages/\ufeffid.jpg", a path that looks right and does not exist
    with open(list_path, encoding="utf-8-sig") as f:
        try:
            lines = f.readlines()
        except UnicodeDecodeError as e:
            raise DataError(f"{list_path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        for lineno, line in enumerate(lines, 1):
            line = line.replace("\ufeff", "").strip()  # strip(): CRLF and trailing blanks
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 1 and ("/" in parts[0] or parts[0].endswith(img_suffix)):
                # one image path (U2PL's Cityscapes lists): the label path follows the layout's rule
                rel = parts[0].lstrip("/")
                image = os.path.join(root, rel)
                label = os.path.join(root, label_path_for(rel, img_dir, ann_dir, img_suffix, ann_suffix))
                sid = os.path.basename(rel)
                sid = sid[:-len(img_suffix)] if sid.endswith(img_suffix) else os.path.splitext(sid)[0]
            elif len(parts) == 1:
                sid = parts[0]
                image = os.path.join(root, img_dir, sid + img_suffix)
                label = os.path.join(root, ann_dir, sid + ann_suffix)
            elif len(parts) == 2 and not any("/" in p or os.path.splitext(p)[1] for p in parts):
                # neither half is a path: an id with a space in it, not an image/label pair
                problem = (f"{list_path}:{lineno}: {line!r}: ids cannot contain spaces; {pair_hint}")
                if problems is None:
                    raise DataError(problem)
                problems.append(problem)
                continue
            elif len(parts) == 2:
                image = os.path.join(root, parts[0].lstrip("/"))
                label = os.path.join(root, parts[1].lstrip("/"))
                sid = os.path.splitext(os.path.basename(parts[0]))[0]
            else:
                problem = (f"{list_path}:{lineno}: expected 'id' or 'image label', got {line!r} "
                           f"(ids cannot contain spaces; {pair_hint})")
                if problems is None:
                    raise DataError(problem)
                problems.append(problem)
                continue
            if sid in seen:
                problem = f"{list_path}:{lineno}: duplicate id {sid!r} (first on line {seen[sid]})"
                if problems is None:
                    raise DataError(problem)
                problems.append(problem)
                continue
            seen[sid] = lineno
            if not need_labels and not os.path.exists(label):
                label = None
            samples.append(Sample(sid, image, label))
    if not samples:
        raise DataError(f"split list is empty: {list_path}")
    return samples


def load_image(path: str) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB. Grayscale and RGBA are converted; 16-bit is rescaled."""
    if not os.path.isfile(path):
        raise DataError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = np.clip(arr / 257.0 if arr.max() > 255 else arr, 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
            if im.mode != "RGB":
                im = im.convert("RGB")  # L, P, RGBA (alpha dropped), CMYK, ...
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def load_label(path: str, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Read an index label (mode L, P or 16-bit) as HxW uint8; RGB labels are rejected."""
    if not os.path.isfile(path):
        raise DataError(f"label not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA"):
                raise DataError(f"label {path} is an {im.mode} colour image; expected an index PNG "
                                f"(mode L or P) whose pixel values are class ids")
            arr = np.asarray(im)
    except (OSError, SyntaxError) as e:
        raise DataError(f"cannot read label {path}: {e}") from None
    bad = (arr >= num_classes) & (arr != ignore_index)
    if bad.any():
        values = np.unique(arr[bad]).tolist()
        raise DataError(f"label {path} has values {values[:10]} outside 0..{num_classes - 1} and "
                        f"{ignore_index}{_raw_label_hint(values, num_classes)}")
    return arr.astype(np.uint8)


def _raw_label_hint(values: list, num_classes: int) -> str:
    """What a known dataset's unconverted labels look like, and the script that converts them."""
    if num_classes == 150 and values[-1] == 150:
        return ("; raw ADE20K annotations (0 = other, 1..150 = the classes)? datasets/prepare_ade20k.py "
                "converts them (0 -> 255, k -> k-1)")
    if num_classes == 81 and values[-1] <= 90:
        return ("; COCO category ids (1..90 with gaps) instead of the 81 class indices? "
                "datasets/prepare_coco.py writes the masks")
    return ""


# label files that a script in datasets/ writes, by the path's form
PREPARED_BY = ((r"(^|/)annotations_150/(training|validation)/[^/]+\.png$", "datasets/prepare_ade20k.py"),
               (r"(^|/)masks/\d{12}\.png$", "datasets/prepare_coco.py"),
               (r"_gtFine_labelTrainIds\.png$", "datasets/prepare_cityscapes.py"),
               (r"(^|/)SegmentationClassAug/[^/]+\.png$", "datasets/prepare_voc_aug.py"))


def preparation_script(label_path: str) -> str | None:
    """The datasets/ script that writes a label file of this form (None: not a known layout)."""
    path = label_path.replace(os.sep, "/")
    return next((script for pattern, script in PREPARED_BY if re.search(pattern, path)), None)


class SegDataset:
    """Images (and labels) of one split; ``transform(image, label, rng_seed)`` augments.

    ``__getitem__`` takes ``(index, seed)`` from the streams in ``seg_ssl.data.streams`` so that
    augmentation depends only on the sample's position in the run, never on worker state: a resumed
    run sees exactly the crops an uninterrupted one would.
    """

    def __init__(self, samples: list[Sample], num_classes: int, ignore_index: int = 255,
                 transform=None, with_labels: bool = True):
        self.samples = samples
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.transform = transform
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        s = self.samples[i]
        image = load_image(s.image)
        label = None
        if self.with_labels:
            if s.label is None:
                raise DataError(f"sample {s.id!r} has no label file")
            label = load_label(s.label, self.num_classes, self.ignore_index)
            if label.shape != image.shape[:2]:
                raise DataError(f"image {s.image} is {image.shape[1]}x{image.shape[0]} but label "
                                f"{s.label} is {label.shape[1]}x{label.shape[0]}")
        return image, label

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, 0)
        image, label = self.load(index)
        out = self.transform(image, label, seed) if self.transform else {"image": image, "label": label}
        out["index"] = index
        return out


def build_split(cfg_data, which: str, transform=None, with_labels: bool | None = None) -> SegDataset:
    """``which`` is 'labeled', 'unlabeled' or 'val'; list paths are relative to the data root.
    Unlabeled images are read without labels unless ``with_labels`` (a benchmark's hidden truth)."""
    with_labels = which != "unlabeled" if with_labels is None else with_labels
    list_key = {"labeled": "labeled_list", "unlabeled": "unlabeled_list", "val": "val_list"}[which]
    if not os.path.isdir(cfg_data.root):
        raise DataError(f"data.root {cfg_data.root!r} is not a directory; expected a VOC-style layout "
                        f"root/{cfg_data.img_dir}/*{cfg_data.img_suffix}, "
                        f"root/{cfg_data.ann_dir}/*{cfg_data.ann_suffix} and split lists")
    list_path = resolve_list(cfg_data.root, cfg_data[list_key])
    samples = read_split(list_path, cfg_data.root, cfg_data.img_dir, cfg_data.ann_dir,
                         cfg_data.img_suffix, cfg_data.ann_suffix, need_labels=with_labels)
    # existence only (cheap): a missing file fails now, not when a batch first draws it hours in
    missing = [p for s in samples for p in (s.image, s.label if with_labels else None)
               if p is not None and not os.path.isfile(p)]
    if missing:
        script = next((preparation_script(p) for p in missing if preparation_script(p)), None)
        raise DataError(f"data.{list_key} {list_path}: {len(missing)} listed file(s) missing, e.g. {missing[0]}"
                        + (f" and {missing[1]}" if len(missing) > 1 else "")
                        + (f"; {script} writes the labels" if script else "")
                        + "; run tools/check_dataset.py CONFIG for every problem")
    return SegDataset(samples, cfg_data.num_classes, cfg_data.ignore_index, transform, with_labels=with_labels)


def unreadable(dataset: SegDataset, indices) -> list[str]:
    """Decode the samples at ``indices`` (image, label, sizes, label values) as training or
    evaluation would; returns one problem line per sample that fails."""
    problems = []
    for i in indices:
        try:
            dataset.load(i)
        except DataError as e:
            problems.append(str(e))
    return problems


def resolve_list(root: str, path: str) -> str:
    """Split lists are relative to the data root unless absolute."""
    return path if os.path.isabs(path) else os.path.join(root, path)


def check_disjoint(labeled: SegDataset, unlabeled: SegDataset, allow_overlap: bool, where: str):
    both = sorted({s.id for s in labeled.samples} & {s.id for s in unlabeled.samples})
    if both and not allow_overlap:
        raise ConfigError(f"{where}: {len(both)} ids are in both the labeled and the unlabeled list "
                          f"(e.g. {both[:3]}); set data.allow_overlap=true if that is intended")
