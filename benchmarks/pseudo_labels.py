"""How good are a checkpoint's pseudo labels? Scores them against the true labels of images that
a semi-supervised run treats as unlabeled (on the digits set every image has a label).

    python benchmarks/pseudo_labels.py configs/digits_sup.yaml runs/x/latest.pth \
        --list splits/1_16/unlabeled.txt [--limit 600]

Prints, for the plain argmax and for ``fg_marginal`` pseudo labels, the pixel accuracy, the share
of foreground pixels labelled background, and how often a foreground pixel labelled foreground gets
the right class; then that class accuracy against the share of such pixels kept when pixels are
kept only where p(class | foreground) reaches a threshold. Class 0 is taken to be background.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def quality(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
            thresholds=(0.0, 0.5, 0.7, 0.9)) -> dict:
    """``probs`` (B, K, H, W) softmax output, ``labels`` (B, H, W). Fractions, see the module doc."""
    from seg_ssl.losses.pseudo_labels import pseudo_labels
    logits = probs.clamp_min(1e-12).log()
    valid = labels != ignore_index
    fg = valid & (labels > 0)
    out = {}
    for rule in ("argmax", "fg_marginal"):
        pl = pseudo_labels(logits, fg_marginal=rule == "fg_marginal")
        as_fg = fg & (pl > 0)
        out[rule] = {"pixel_acc": float((pl[valid] == labels[valid]).float().mean()),
                     "fg_as_bg": float((pl[fg] == 0).float().mean()),
                     "class_acc": float((pl[as_fg] == labels[as_fg]).float().mean())}
    pl, conf = pseudo_labels(logits, fg_marginal=True, return_conf=True)  # conf: p(class | fg) on fg
    labelled_fg = fg & (pl > 0)  # foreground pixels fg_marginal labels as foreground
    n = max(int(labelled_fg.sum()), 1)
    out["by_threshold"] = []
    for t in thresholds:
        keep = labelled_fg & (conf >= t)
        acc = float((pl[keep] == labels[keep]).float().mean()) if keep.any() else float("nan")
        out["by_threshold"].append({"threshold": t, "kept": float(keep.sum()) / n, "class_acc": acc})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--list", default=None, help="image list (default: the config's data.unlabeled_list)")
    p.add_argument("--limit", type=int, default=600, help="score the first N images")
    p.add_argument("--batch", type=int, default=50)
    a = p.parse_args(argv)
    from seg_ssl.config import load_config
    from seg_ssl.data.dataset import build_split
    from seg_ssl.data.transforms import val_pipeline
    from seg_ssl.engine.loading import load_for_eval
    cfg = load_config(a.config, [])
    d = cfg.data
    d["labeled_list"] = a.list or d.unlabeled_list  # read as labeled: the labels are the reference
    predict = load_for_eval(cfg, a.checkpoint).predict
    data = build_split(d, "labeled", val_pipeline(d))
    n = min(a.limit, len(data))
    probs, labels = [], []
    with torch.no_grad():
        for i in range(0, n, a.batch):
            items = [data[j] for j in range(i, min(n, i + a.batch))]
            x = torch.stack([torch.as_tensor(s["image"]) for s in items])
            probs.append(predict(x).float().softmax(1))
            labels.append(torch.stack([torch.as_tensor(s["label"]) for s in items]).long())
    q = quality(torch.cat(probs), torch.cat(labels), d.ignore_index)
    print(f"{n} images of {d.labeled_list}")
    print("| pseudo labels | pixel acc | foreground labelled background | class right where labelled "
          "foreground |")
    print("|---|---|---|---|")
    for rule in ("argmax", "fg_marginal"):
        r = q[rule]
        print(f"| {rule} | {100 * r['pixel_acc']:.1f} | {100 * r['fg_as_bg']:.1f} | "
              f"{100 * r['class_acc']:.1f} |")
    print("\n| p(class given foreground) >= | kept | class right |\n|---|---|---|")
    for r in q["by_threshold"]:
        print(f"| {r['threshold']:.1f} | {100 * r['kept']:.1f} | {100 * r['class_acc']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
