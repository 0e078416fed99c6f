"""Online hard example mining cross-entropy (CPS's Cityscapes supervised term)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7,
                       min_kept: int = 50000, ignore_index: int = 255) -> torch.Tensor:
    """Mean cross-entropy over the hard pixels: those whose probability of the true class is at
    most ``max(thresh, p_k)``, ``p_k`` being the ``min_kept``-th smallest such probability, so at
    least ``min_kept`` pixels are kept; with fewer valid pixels than that, all are kept."""
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    valid = target.flatten() != ignore_index
    n_valid = int(valid.sum())
    if n_valid == 0:
        return logits.sum() * 0.0
    with torch.no_grad():
        prob = torch.exp(-ce[valid])  # probability of the true class
        if n_valid > min_kept > 0:
            kth = torch.kthvalue(prob, min_kept).values
            threshold = torch.clamp(kth, min=thresh)
        else:
            threshold = torch.tensor(1.0, device=prob.device)
        keep = prob <= threshold
    return ce[valid][keep].mean()
