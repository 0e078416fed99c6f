"""The confusion matrix behind the metrics, saved with class names and drawn row-normalised.

Rows are the ground truth, columns the prediction (as ``metrics.confusion_matrix`` counts them);
a row divided by its sum reads as "of the pixels of class r, the share predicted as c", so the
diagonal is each class's accuracy and an off-diagonal cell says which class took its pixels.
"""
from __future__ import annotations

import csv
import os

import numpy as np


def save_confusion_csv(cm, names: list[str], path: str) -> None:
    cm = np.asarray(cm)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ground truth \\ prediction", *names])
        for name, row in zip(names, cm):
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
