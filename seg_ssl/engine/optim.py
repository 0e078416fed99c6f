"""The optimizer and its parameter groups: encoders at ``lr x backbone_lr_mult``, the rest at ``lr``,
optionally without weight decay on biases and normalisation weights; the poly schedule sets each
group's lr from its ``lr_mult``."""
from __future__ import annotations

import torch
import torch.nn as nn

from seg_ssl.engine.schedule import poly_lr
from seg_ssl.models.segmentor import Segmentor


def param_groups(model: nn.Module, backbone_mult: float, weight_decay: float,
                 decay_norm_and_bias: bool = True) -> list[dict]:
    """Encoders of every Segmentor at lr x backbone_mult, everything else at lr. With
    ``decay_norm_and_bias`` false, biases and normalisation weights (every parameter of one
    dimension) get no weight decay, as the CPS release's ``group_weight`` does."""
    backbone = {id(p) for m in model.modules() if isinstance(m, Segmentor) for p in m.encoder.parameters()}
    groups = []
    for name, mult, in_group in (("backbone", backbone_mult, lambda p: id(p) in backbone),
                                 ("head", 1.0, lambda p: id(p) not in backbone)):
        params = [p for p in model.parameters() if p.requires_grad and in_group(p)]
        if decay_norm_and_bias:
            groups.append({"params": params, "lr_mult": mult, "weight_decay": weight_decay, "name": name})
            continue
        groups.append({"params": [p for p in params if p.ndim > 1], "lr_mult": mult,
                       "weight_decay": weight_decay, "name": name})
        groups.append({"params": [p for p in params if p.ndim <= 1], "lr_mult": mult,
                       "weight_decay": 0.0, "name": name + "_no_decay"})
    return groups


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    groups = param_groups(model, t.backbone_lr_mult, t.weight_decay, t.decay_norm_and_bias)
    for g in groups:
        g["lr"] = t.lr * g["lr_mult"]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    # fused: one kernel for every tensor's update instead of a Python loop over ~200 tensors (on the
    # CPU ~20 ms a step less at the digits model's size, benchmarks/README.md "Speed options")
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in model.parameters())
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, t, iteration: int) -> float:
    """Set every group's lr for ``iteration`` from the poly schedule of config section ``train``;
    returns the base lr."""
    lr = poly_lr(t.lr, iteration, t.iters, t.poly_power, t.warmup_iters, t.warmup_ratio)
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
    return lr
