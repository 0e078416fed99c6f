"""Reproducible, nested labeled/unlabeled splits of a train list."""
from __future__ import annotations

import math
import os
import random
from fractions import Fraction

import numpy as np


def split_name(spec: str) -> str:
    """'1/16' -> '1_16' (the UniMatch folder convention), '92' -> '92'."""
    return spec.replace("/", "_")


def labeled_count(spec: str, total: int) -> int:
    """'1/16', '1/8', '1/4' of 10,582 -> 662, 1,323, 2,646: rounded up, as the CPS/U2PL counts."""
    if "/" in spec:
        frac = Fraction(spec)
        if not 0 < frac <= 1:
            raise ValueError(f"split fraction {spec!r} must be in (0, 1]")
        return max(1, math.ceil(total * frac))
    count = int(spec)
    if not 0 < count <= total:
        raise ValueError(f"split count {spec!r} must be in 1..{total}")
    return count


def nested_splits(ids: list[str], specs: list[str], seed: int = 0) -> dict:
    """One seeded permutation; every labeled set is a prefix of it, so smaller sets nest in larger.

    Returns ``{name: (labeled_ids, unlabeled_ids)}`` with both lists sorted; unlabeled is the
    complement of labeled in ``ids``.
    """
    if len(set(ids)) != len(ids):
        raise ValueError("train list has duplicate ids")
    order = np.random.default_rng(seed).permutation(len(ids))
    out = {}
    for spec in specs:
        k = labeled_count(spec, len(ids))
        chosen = set(order[:k].tolist())
        labeled = sorted(ids[i] for i in chosen)
        unlabeled = sorted(ids[i] for i in range(len(ids)) if i not in chosen)
        out[split_name(spec)] = (labeled, unlabeled)
    return out


def shuffled_prefix_splits(names: list[str], counts: dict, seed: int = 0) -> dict:
    """UniMatch V2's ADE20K rule (its lists are SemiVL's generator's): the names sorted, then shuffled
    in place by Python's ``random.Random(seed)``; labeled = the first N, unlabeled = the rest, both
    in that shuffled order. Every labeled list is a prefix of one order, so smaller ones nest in
    larger. ``counts`` maps a split name to N; returns ``{name: (labeled, unlabeled)}``."""
    if len(set(names)) != len(names):
        raise ValueError("train list has duplicate names")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    out = {}
    for name, n in counts.items():
        if not 0 < n <= len(order):
            raise ValueError(f"split {name}: {n} labeled of {len(order)} names")
        out[name] = (order[:n], order[n:])
    return out


def write_text_atomic(path: str, text: str) -> None:
    """Write ``path`` whole or not at all: an interrupted preparation leaves no half list behind."""
    tmp = f"{path}.partial{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_split(folder: str, labeled: list[str], unlabeled: list[str]) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, items in (("labeled.txt", labeled), ("unlabeled.txt", unlabeled)):
        write_text_atomic(os.path.join(folder, name), "\n".join(items) + ("\n" if items else ""))
