"""What ``tools/train.py --dry-run`` shows before anything trains: the per-process sizes a config
implies, and what is missing on disk (the data root, a list, a listed file)."""
from __future__ import annotations

import os

from seg_ssl.errors import ConfigError, DataError
from seg_ssl.methods import METHODS


def derived_sizes(cfg, world_size: int) -> dict:
    """Per-process sizes computed from the global config; a global batch that does not divide by
    the world size is a one-line error."""
    d = cfg.data
    for key, g in (("data.batch_size", d.batch_size), ("data.unlabeled_batch_size", d.unlabeled_batch_size)):
        if g % world_size:
            raise ConfigError(f"{key} = {g} is the global batch and must be divisible by the world "
                              f"size {world_size}")
    per_l, per_u = d.batch_size // world_size, d.unlabeled_batch_size // world_size
    sizes = {"world_size": world_size, "labeled_per_process": per_l, "unlabeled_per_process": per_u}
    method = METHODS[cfg.method]
    draws = method.unlabeled_draws(cfg)
    if draws > 1:  # CutMix: each mixed image is made of two drawn images
        sizes["unlabeled_drawn_per_process"] = draws * per_u
    sizes.update(method.dry_run_sizes(cfg, world_size, per_u))
    return sizes


def missing_data(cfg) -> list[str]:
    """One note per thing a run of ``cfg`` would not find: the data root, or a split list or a
    file it lists (each split's first problem); [] when everything is there."""
    from seg_ssl.data.dataset import build_split
    if not os.path.isdir(cfg.data.root):
        return [f"data.root {cfg.data.root!r} does not exist here; set data.root=... before training"]
    notes = []
    for which in ("labeled", "unlabeled", "val"):
        if which == "unlabeled" and not cfg.data.unlabeled_list:
            continue
        try:
            build_split(cfg.data, which)
        except DataError as e:
            notes.append(str(e))
    return notes
