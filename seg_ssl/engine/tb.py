"""What the trainer writes to TensorBoard besides the loss curves.

At each evaluation: 4 fixed val images as image | ground truth | prediction panels (palette
colours), per-class IoU by class name; at the start: the resolved config as text and as hparams
(with val/mIoU as its metric), so runs compare in the HPARAMS tab; during training: pseudo-label
class shares by class name. Each fresh run writes its own event folder ``tb/<start time>`` and a
resumed run continues the folder it started, so the curves of two runs in one work dir never mix.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
import yaml

from seg_ssl.config import flatten
from seg_ssl.data.classes import class_names

PANELS = 4  # val images shown at every evaluation: the same ones each time


def event_dir(work_dir: str, resumed: bool) -> tuple[str, bool, int]:
    """``(folder, is_new, earlier)``: a resumed run continues the newest ``tb/<run>`` folder; a fresh
    run (``resume=null``, or nothing to resume) gets a new one named by its start time; ``earlier``
    counts what tb/ held before (run folders, or event files of older versions)."""
    root = os.path.join(work_dir, "tb")
    entries = os.listdir(root) if os.path.isdir(root) else []
    runs = sorted(d for d in entries if os.path.isdir(os.path.join(root, d)))
    if resumed and runs:
        return os.path.join(root, runs[-1]), False, len(entries)
    name = time.strftime("%Y%m%d-%H%M%S")
    n, base = 1, name
    while name in runs or os.path.exists(os.path.join(root, name)):
        n += 1
        name = f"{base}-{n}"
    return os.path.join(root, name), True, len(entries)


def class_tag(key: str, names) -> str:
    """``pseudo_cls/3`` -> ``pseudo_cls/digit_2``: a share by class name, not by index."""
    if names and key.startswith("pseudo_cls/"):
        i = key.split("/", 1)[1]
        if i.isdigit() and int(i) < len(names):
            return f"pseudo_cls/{names[int(i)]}"
    return key


def _flat(d: dict) -> dict:
    """Dotted keys; values TensorBoard's hparams take (numbers, strings, booleans), others as text."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(d).items()}


def log_config(writer, cfg: dict) -> None:
    """The resolved config as a text (YAML, a code block) and as hparams with val/mIoU as the metric
    (written into this run's folder, not a sub-run as ``SummaryWriter.add_hparams`` would)."""
    from torch.utils.tensorboard.summary import hparams
    text = yaml.safe_dump(cfg, sort_keys=False)
    writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # indented: markdown code
    exp, ssi, sei = hparams(_flat(cfg), {"val/mIoU": float("nan")})
    for summary in (exp, ssi, sei):
        writer.file_writer.add_summary(summary)


def panel_indices(n: int) -> list[int]:
    """``PANELS`` val images spread over the list (the same at every evaluation)."""
    return sorted(set(np.linspace(0, n - 1, min(PANELS, n)).round().astype(int).tolist())) if n else []


@torch.no_grad()
def val_panels(predict_fn, dataset, cfg, size_divisor: int, device) -> list[np.ndarray]:
    """HxW*3 uint8 RGB panels: the image, its ground truth and the prediction in palette colours
    (ignored pixels white), with white gaps between them."""
    from seg_ssl.evaluation.evaluator import predict_kwargs
    from seg_ssl.evaluation.inference import predict_probs
    from seg_ssl.viz.overlay import colorize, get_palette
    d = cfg.data
    lut = get_palette(d.palette, d.ignore_index)
    mean = torch.tensor(d.mean).view(3, 1, 1)
    std = torch.tensor(d.std).view(3, 1, 1)
    out = []
    for i in panel_indices(len(dataset)):
        item = dataset[i]
        x = item["image"]
        pred = predict_probs(predict_fn, x[None].to(device), size_divisor=size_divisor,
                             **predict_kwargs(cfg)).argmax(1)[0].cpu().numpy()
        image = ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        gap = np.full((image.shape[0], 2, 3), 255, np.uint8)
        out.append(np.concatenate([image, gap, colorize(item["label"].numpy(), lut), gap,
                                   colorize(pred, lut)], 1))
    return out


def log_eval(writer, res: dict, names, iteration: int, panels: list[np.ndarray]) -> None:
    """Per-class IoU by class name and the image | truth | prediction panels."""
    names = class_names(names, len(res["IoU"]))
    for name, iou in zip(names, res["IoU"], strict=True):
        if iou is not None and not math.isnan(iou):
            writer.add_scalar(f"val_IoU/{name}", iou, iteration)
    for k, panel in enumerate(panels):
        writer.add_image(f"val_panels/{k} (image | truth | prediction)", panel, iteration, dataformats="HWC")


class Board:
    """A run's TensorBoard: the main process's event writer, or nothing (every method a no-op)."""

    def __init__(self, writer):
        self.writer = writer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            self.writer.close()

    def train_window(self, averages: dict, lr: float, iteration: int, names) -> None:
        """A log window's mean losses (pseudo-label shares by class name) and the lr."""
        if self.writer is None:
            return
        for k, v in averages.items():
            self.writer.add_scalar(f"train/{class_tag(k, names)}", v, iteration)
        self.writer.add_scalar("train/lr", lr, iteration)

    def evaluation(self, res: dict, names, iteration: int, panels) -> None:
        """mIoU, aAcc, mAcc, per-class IoU and the panels (``panels()`` is called here only, so a
        process without a writer predicts nothing)."""
        if self.writer is None:
            return
        for k in ("mIoU", "aAcc", "mAcc"):
            self.writer.add_scalar(f"val/{k}", res[k], iteration)
        log_eval(self.writer, res, names, iteration, panels())
