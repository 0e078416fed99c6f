"""CAC's directional context-aware contrastive loss, memory-bounded.

For anchors ``a_i`` (crop whose prediction is less confident), detached targets ``p_i`` (the same
pixel seen from the other crop) and negatives ``n_j``::

    s+_i  = a_i . p_i / t          s-_ij = a_i . n_j / t          M_ij = [y_i != y_j]
    l_i   = -s+_i + log( exp(s+_i) + sum_j M_ij exp(s-_ij) )

The n x N similarity matrix is never held. One pass over chunks of negatives keeps an online
(running-max) log-sum-exp and, alongside it, the softmax-weighted sum of the vectors, which *is* the
gradient of ``l_i`` with respect to ``a_i``::

    dl_i / da_i = ( sum_k softmax_k v_k - p_i ) / t,    v = [p_i, n_1, ..., n_N]

so backward only scales a stored (n, D) tensor: two (n x chunk x D) products per chunk in forward,
none in backward, O(n x chunk) extra memory. Inputs in bf16/fp16 are accumulated in float32.
"""
from __future__ import annotations

import torch


class _AnchorContrast(torch.autograd.Function):
    """Per-anchor loss ``l`` (n,), gradient to the anchors only."""

    @staticmethod
    def forward(ctx, anchor, target, anchor_label, neg, neg_label, temperature: float, chunk: int):
        in_dtype = anchor.dtype
        a = anchor.detach().float()
        p = target.detach().float()
        neg = neg.detach().float()
        inv_t = 1.0 / temperature
        pos = (a * p).sum(1) * inv_t  # (n,)
        # online log-sum-exp seeded with the positive term: max m, sum s, weighted vectors g
        m = pos.clone()
        s = torch.ones_like(pos)
        g = p.clone()
        for start in range(0, neg.shape[0], chunk):
            nb = neg[start:start + chunk]
            sim = (a @ nb.t()).mul_(inv_t)  # (n, c)
            sim.masked_fill_(anchor_label[:, None] == neg_label[None, start:start + chunk], float("-inf"))
            m_new = torch.maximum(m, sim.max(1).values)  # finite: m starts at the positive
            scale = torch.exp(m - m_new)
            w = torch.exp(sim.sub_(m_new[:, None]))  # in place: sim is not needed any more
            s = s * scale + w.sum(1)
            g = g * scale[:, None] + w @ nb
            m = m_new
        lse = m + torch.log(s)
        ctx.save_for_backward((g / s[:, None] - p).mul_(inv_t))
        ctx.in_dtype = in_dtype
        return lse - pos

    @staticmethod
    def backward(ctx, grad_loss):
        (grad_anchor,) = ctx.saved_tensors
        grad = (grad_loss.float()[:, None] * grad_anchor).to(ctx.in_dtype)
        return grad, None, None, None, None, None, None


def anchor_contrast(anchor, target, anchor_label, neg, neg_label, temperature: float = 0.1,
                    chunk: int = 8192) -> torch.Tensor:
    """Per-anchor losses ``l_i`` (float32, shape (n,)); gradient flows into ``anchor`` only."""
    if anchor.shape[0] == 0:
        return anchor.new_zeros(0, dtype=torch.float32)
    return _AnchorContrast.apply(anchor, target, anchor_label, neg, neg_label, float(temperature), int(chunk))


def directional_contrastive_loss(feat1, feat2, conf1, conf2, label1, label2, neg_feat, neg_label,
                                 temperature: float = 0.1, pos_thresh: float = 0.75,
                                 chunk: int = 8192) -> torch.Tensor:
    """L1 + L2 of CAC (scalar, float32).

    ``feat1``/``feat2``: (n, D) L2-normalised features of the same n overlap pixels in crop 1 / 2;
    ``conf*``, ``label*``: (n,) max softmax probability and argmax there; ``neg_feat`` (N, D),
    ``neg_label`` (N,). L1 uses crop-1 anchors where crop 2 is confident (> pos_thresh) and more
    confident than crop 1, with crop 2 as the detached target; L2 the other way round. Each is a
    mean over its valid anchors (0 when there are none).
    """
    neg_feat = neg_feat.detach()
    total = feat1.float().sum() * 0.0 + feat2.float().sum() * 0.0  # keeps the graph when both are empty
    for a, p, ca, cp, ya in ((feat1, feat2, conf1, conf2, label1), (feat2, feat1, conf2, conf1, label2)):
        keep = (cp > pos_thresh) & (ca < cp)
        if keep.any():
            per = anchor_contrast(a[keep], p[keep].detach(), ya[keep], neg_feat, neg_label, temperature, chunk)
            total = total + per.sum() / (keep.sum() + 1e-12)
    return total
