"""The confusion matrix behind the metrics: counted from predictions (or from two folders of index
PNGs), saved with class names and drawn row-normalised.

Rows are the ground truth, columns the prediction;
a row divided by its sum reads as "of the pixels of class r, the share predicted as c", so the
diagonal is each class's accuracy and an off-diagonal cell says which class took its pixels.
"""
from __future__ import annotations

import csv
import os

import numpy as np
import torch

from seg_ssl.errors import ConfigError
from seg_ssl.evaluation.metrics import metrics_from_confusion


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(K, K) int64 counts for one batch; labels outside 0..K-1 other than ignore are errors."""
    pred, label = pred.reshape(-1).long(), label.reshape(-1).long()
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    if label.numel() and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(f"label values outside 0..{num_classes - 1} and {ignore_index}")
    idx = label * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def score_folders(pred_dir: str, gt_dir: str, num_classes: int, ignore_index: int = 255,
                  subset: list[str] | None = None) -> dict:
    """Metrics of the index PNGs in ``pred_dir`` against the label PNGs of the same names in
    ``gt_dir`` (only the ids in ``subset`` when given, each of which must have a label). A predicted
    ignore index is no class: a miss for the true class, and a false positive for none."""
    from seg_ssl.data.dataset import load_label
    for d in (pred_dir, gt_dir):
        if not os.path.isdir(d):
            raise ConfigError(f"not a directory: {d}")
    gts = sorted(f for f in os.listdir(gt_dir) if f.lower().endswith(".png"))
    if subset is not None:
        have = {os.path.splitext(f)[0]: f for f in gts}
        absent = [i for i in subset if i not in have]
        if absent:
            raise ConfigError(f"{len(absent)} listed ids have no label PNG in {gt_dir} (e.g. {absent[:3]})")
        gts = [have[i] for i in dict.fromkeys(subset)]
    if not gts:
        raise ConfigError(f"no label PNGs in {gt_dir}")
    missing = [f for f in gts if not os.path.isfile(os.path.join(pred_dir, f))]
    if missing:
        raise ConfigError(f"{len(missing)} labels have no prediction of the same name in {pred_dir} "
                          f"(e.g. {missing[:3]})")
    cm = torch.zeros((num_classes, num_classes), dtype=torch.int64)
    unpredicted = np.zeros(num_classes, np.int64)
    for f in gts:
        gt = load_label(os.path.join(gt_dir, f), num_classes, ignore_index)
        pred = load_label(os.path.join(pred_dir, f), num_classes, ignore_index)
        if pred.shape != gt.shape:
            raise ConfigError(f"{f}: prediction is {pred.shape[::-1]} but label is {gt.shape[::-1]}")
        none = (pred == ignore_index) & (gt != ignore_index)
        unpredicted += np.bincount(gt[none], minlength=num_classes)
        gt = np.where(none, ignore_index, gt)
        cm += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), num_classes, ignore_index)
    out = metrics_from_confusion(cm.numpy(), unpredicted)
    out["confusion"] = cm
    return out

def save_confusion_csv(cm, names: list[str], path: str) -> None:
    cm = np.asarray(cm)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ground truth \\ prediction", *names])
        for name, row in zip(names, cm, strict=True):
            w.writerow([name, *(int(v) for v in row)])


def row_normalised(cm) -> np.ndarray:
    """Each row divided by its sum; a class with no labeled pixel is a row of NaN (drawn blank)."""
    cm = np.asarray(cm, dtype=np.float64)
    sums = cm.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums > 0, cm / np.where(sums > 0, sums, 1), np.nan)


def plot_confusion(cm, names: list[str], path: str, title: str = "confusion (rows: ground truth, "
                   "each row sums to 1)") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = row_normalised(cm)
    k = len(names)
    side = max(4.0, 0.45 * k + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=9)
    if k <= 30:  # the shares as numbers, where they fit
        for r in range(k):
            for c in range(k):
                if not np.isnan(norm[r, c]) and norm[r, c] >= 0.005:
                    ax.text(c, r, f"{100 * norm[r, c]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[r, c] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row's pixels")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_confusion(cm, names: list[str], out_json: str) -> tuple[str, str]:
    """``<stem>_confusion.csv`` and ``<stem>_confusion.png`` beside ``out_json``; returns both paths."""
    stem = os.path.splitext(out_json)[0]
    paths = (stem + "_confusion.csv", stem + "_confusion.png")
    save_confusion_csv(cm, names, paths[0])
    plot_confusion(cm, names, paths[1])
    return paths


def list_ids(path: str) -> list[str]:
    """The ids of a split list (``id`` or ``image label`` per line): file names without extension."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--list {path}: no such file")
    ids = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts:
                ids.append(os.path.splitext(os.path.basename(parts[-1] if len(parts) == 2 else parts[0]))[0])
    return ids
