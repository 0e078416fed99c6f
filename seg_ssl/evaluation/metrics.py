"""Confusion-matrix metrics accumulated over a whole set (the field's convention, as mmseg).

Rows are ground truth, columns prediction. Pixels labelled ``ignore_index`` are excluded. A class
absent from both ground truth and prediction has IoU NaN and is left out of the means.
"""
from __future__ import annotations

import math

import numpy as np

from seg_ssl.data.classes import class_names as names_of
from seg_ssl.evaluation.protocols import describe


def metrics_from_confusion(cm, unpredicted=None) -> dict:
    """aAcc, mIoU, mAcc (fractions) and per-class IoU/Acc lists (NaN for absent classes).

    ``unpredicted`` (K,) counts, per true class, pixels that got no class at all (a prediction of
    the ignore index, e.g. in PNGs scored by ``tools/eval.py --pred-dir``): each is a miss for its
    true class and a false positive for no class, as mmseg counts them."""
    cm = np.asarray(cm, dtype=np.float64)
    missed = np.zeros(len(cm)) if unpredicted is None else np.asarray(unpredicted, dtype=np.float64)
    tp = np.diag(cm)
    gt = cm.sum(1) + missed
    pred = cm.sum(0)
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    total = cm.sum() + missed.sum()
    return {
        "aAcc": float(tp.sum() / total) if total > 0 else math.nan,
        "mIoU": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else math.nan,
        "mAcc": float(np.nanmean(acc)) if np.any(~np.isnan(acc)) else math.nan,
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
    }


def format_table(metrics: dict, class_names: list[str] | None = None) -> str:
    """Per-class IoU/Acc and the summary row, in percent."""
    k = len(metrics["IoU"])
    names = names_of(class_names, k)
    width = max(8, max(len(n) for n in names))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]

    def pct(v):
        return "   nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"

    for n, iou, acc in zip(names, metrics["IoU"], metrics["Acc"], strict=True):
        lines.append(f"{n:<{width}}  {pct(iou)}  {pct(acc)}")
    lines.append("-" * (width + 16))
    lines.append(f"aAcc {pct(metrics['aAcc']).strip()}   mIoU {pct(metrics['mIoU']).strip()}   "
                 f"mAcc {pct(metrics['mAcc']).strip()}")
    if metrics.get("protocol"):
        lines.append(f"protocol: {describe(metrics['protocol'])}")
    return "\n".join(lines)


def to_json(metrics: dict) -> dict:
    """NaN -> null, as ``tools/eval.py --out`` writes; with the ``protocol`` that scored them."""
    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v
    out = {"aAcc": clean(metrics["aAcc"]), "mIoU": clean(metrics["mIoU"]),
           "mAcc": clean(metrics["mAcc"]), "IoU": [clean(v) for v in metrics["IoU"]],
           "Acc": [clean(v) for v in metrics["Acc"]]}
    if metrics.get("protocol"):
        out["protocol"] = dict(metrics["protocol"])
    return out


def evaluation_record(metrics: dict, iteration: int, class_names: list[str] | None = None) -> dict:
    """One line of ``WORK_DIR/metrics.jsonl``: the iteration, aAcc/mIoU/mAcc, per-class IoU and
    accuracy by class name (null for a class absent from prediction and truth) and the confusion
    matrix (rows: truth, columns: prediction), and the protocol that scored it."""
    clean = to_json(metrics)
    names = names_of(class_names, len(clean["IoU"]))
    out = {"iteration": iteration, "aAcc": clean["aAcc"], "mIoU": clean["mIoU"], "mAcc": clean["mAcc"],
           "IoU": dict(zip(names, clean["IoU"], strict=True)),
           "Acc": dict(zip(names, clean["Acc"], strict=True))}
    if "protocol" in clean:
        out["protocol"] = clean["protocol"]
    if "confusion" in metrics:
        out["confusion"] = [[int(v) for v in row] for row in metrics["confusion"].tolist()]
    return out


def format_comparison(runs: dict, class_names: list[str] | None = None) -> str:
    """Per-class IoU of several runs side by side (``{name: metrics}``), then aAcc/mIoU/mAcc rows,
    in percent; a last column gives the difference of the last run from the first."""
    names = list(runs)
    ks = {len(m["IoU"]) for m in runs.values()}
    if len(ks) != 1:
        raise ValueError(f"runs have different numbers of classes: {sorted(ks)}")
    k = ks.pop()
    classes = names_of(class_names, k)
    width = max(8, max(len(n) for n in classes))
    col = max(8, max(len(n) for n in names))
    delta = len(names) > 1

    def pct(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else 100 * v

    def row(label, values):
        cells = [f"{v:>{col}.2f}" if v is not None else f"{'nan':>{col}}" for v in values]
        if delta:
            d = (values[-1] - values[0]) if values[0] is not None and values[-1] is not None else None
            cells.append(f"{d:>+8.2f}" if d is not None else f"{'':>8}")
        return f"{label:<{width}}  " + "  ".join(cells)

    head = (f"{'IoU':<{width}}  " + "  ".join(f"{n:>{col}}" for n in names)
            + (f"  {'diff':>8}" if delta else ""))
    lines = [head, "-" * len(head)]
    for c in range(k):
        lines.append(row(classes[c], [pct(runs[n]["IoU"][c]) for n in names]))
    lines.append("-" * len(head))
    for key in ("mIoU", "aAcc", "mAcc"):
        lines.append(row(key, [pct(runs[n][key]) for n in names]))
    return "\n".join(lines)
