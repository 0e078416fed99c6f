"""Score a model on a dataset: one confusion matrix over the whole set, summed across ranks.

Each rank scores a disjoint shard (``rank::world``), so every image counts exactly once and the
distributed result equals the single-process one.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from seg_ssl.collectives import all_reduce_sum
from seg_ssl.data.streams import shard_indices
from seg_ssl.data.transforms import normalize
from seg_ssl.evaluation.confusion import confusion_matrix
from seg_ssl.evaluation.inference import predict_probs
from seg_ssl.evaluation.metrics import metrics_from_confusion
from seg_ssl.evaluation.protocols import protocol

CPU = torch.device("cpu")


def predict_kwargs(cfg) -> dict:
    """Inference settings from a config's ``eval`` section (window defaults to the crop), and the
    normalised value of a black pixel (what CPS pads its raw images with before normalising),
    computed as the data pipeline normalises."""
    e = cfg.eval
    black = normalize(np.zeros((1, 1, 3), np.uint8), cfg.data.mean, cfg.data.std)[:, 0, 0]
    return dict(mode=e.mode, window=e.window or cfg.data.crop_size, stride=e.stride, multiple=e.multiple,
                scales=tuple(e.scales), flip=e.flip, batch_windows=e.batch_windows, black=black)


@torch.no_grad()
def evaluate(predict_fn, dataset, num_classes: int, ignore_index: int = 255, size_divisor: int = 1,
             device=CPU, rank: int = 0, world_size: int = 1, batch_size: int = 1,
             num_workers: int = 0, progress: bool = False, **predict) -> dict:
    """Metrics (see ``metrics_from_confusion``), the raw ``confusion`` matrix and the ``protocol``
    that scored them (``protocols.protocol``: mode, window, stride ... with defaults resolved)."""
    loader = DataLoader(Subset(dataset, shard_indices(len(dataset), rank, world_size)),
                        batch_size=batch_size, num_workers=num_workers, shuffle=False)
    cm = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
        x = batch["image"].to(device, non_blocking=True)
        probs = predict_probs(predict_fn, x, size_divisor=size_divisor, **predict)
        cm += confusion_matrix(probs.argmax(1), batch["label"].to(device), num_classes, ignore_index)
    all_reduce_sum(cm)
    cm = cm.cpu()
    out = metrics_from_confusion(cm.numpy())
    out["confusion"] = cm
    out["protocol"] = protocol(**predict)
    return out
