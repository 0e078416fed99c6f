"""CAC's directional context-aware contrastive loss, memory-bounded.

For anchors ``a_i`` (crop whose prediction is less confident), detached targets ``p_i`` (the same
pixel seen from the other crop) and negatives ``n_j``::

    s+_i  = a_i . p_i / t          s-_ij = a_i . n_j / t          M_ij = [y_i != y_j]
    l_i   = -s+_i + log( exp(s+_i) + sum_j M_ij exp(s-_ij) )

The n x N similarity matrix is never held. One pass over chunks of negatives keeps a shifted
log-sum-exp and, alongside it, the softmax-weighted sum of the vectors, which *is* the gradient of
``l_i`` with respect to ``a_i``::

    dl_i / da_i = ( sum_k softmax_k v_k - p_i ) / t,    v = [p_i, n_1, ..., n_N]

so backward only scales a stored (n, D) tensor: two (n x chunk x D) products per chunk in forward,
none in backward, O(n x chunk) extra memory. Negatives are grouped by pseudo label so the mask is a
row fill per chunk, and the shift is an exact upper bound (no max pass) unless the temperature is so
low that it could underflow, where a running max takes over. bf16/fp16 inputs accumulate in float32.
"""
from __future__ import annotations

import torch

ROW_BLOCK = 1024  # anchors per tile


def _class_chunks(neg_label: torch.Tensor, chunk: int):
    """Order negatives by pseudo label and cut them into pieces of one class, at most ``chunk``
    long: the mask M_ij = [y_i != y_j] then removes whole anchor rows of a piece, never a matrix."""
    order = torch.argsort(neg_label, stable=True)
    labels, counts = torch.unique_consecutive(neg_label[order], return_counts=True)
    pieces, start = [], 0
    for lab, cnt in zip(labels.tolist(), counts.tolist(), strict=True):
        for s in range(start, start + cnt, chunk):
            pieces.append((lab, s, min(s + chunk, start + cnt)))
        start += cnt
    return order, pieces


class _AnchorContrast(torch.autograd.Function):
    """Per-anchor loss ``l`` (n,), gradient to the anchors only."""

    @staticmethod
    def forward(ctx, anchor, target, anchor_label, neg, neg_label, temperature: float, chunk: int):
        # float32 throughout, under autocast too (which would run addmm in bf16/fp16 again)
        with torch.autocast(anchor.device.type, enabled=False):
            return _AnchorContrast._forward(ctx, anchor, target, anchor_label, neg, neg_label, temperature,
                                            chunk)

    @staticmethod
    def _forward(ctx, anchor, target, anchor_label, neg, neg_label, temperature: float, chunk: int):
        in_dtype = anchor.dtype
        a = anchor.detach().float()
        p = target.detach().float()
        inv_t = 1.0 / temperature
        order, pieces = _class_chunks(neg_label, chunk)
        # [n_j | 1]: one product per chunk gives both the weighted vectors and the weight sums
        neg1 = torch.cat([neg.detach().float()[order], a.new_ones(neg.shape[0], 1)], 1)
        rows = {lab: (anchor_label == lab).nonzero().squeeze(1) for lab in {pc[0] for pc in pieces}}
        pos = (a * p).sum(1) * inv_t  # (n,)
        # Cauchy-Schwarz bounds every similarity of row i by |a_i| max(|p_i|, max_j |n_j|) / t: a
        # fixed shift that can never overflow. It is used where the positive term stays far from
        # underflow (always for unit vectors at t >= 0.034); otherwise a running max is kept.
        nmax = neg1[:, :-1].norm(dim=1).max() if neg.shape[0] else a.new_zeros(())
        shift = a.norm(dim=1) * torch.maximum(p.norm(dim=1), nmax) * inv_t
        fixed = bool((shift - pos).max() < 60.0) if a.shape[0] else True
        m = shift if fixed else pos.clone()  # updated in place, block by block
        acc = torch.cat([p, a.new_ones(a.shape[0], 1)], 1) * torch.exp(pos - m)[:, None]  # [g | s]
        # anchor blocks keep each (rows x chunk) similarity tile in cache between the product that
        # writes it, the exp and the product that reads it
        for r0 in range(0, a.shape[0], ROW_BLOCK):
            r1 = min(r0 + ROW_BLOCK, a.shape[0])
            ab, mb, accb = a[r0:r1], m[r0:r1], acc[r0:r1]
            for lab, s0, s1 in pieces:
                nb = neg1[s0:s1]
                sim = torch.addmm(-mb[:, None], ab, nb[:, :-1].t(), alpha=inv_t)  # s_ij - m_i
                same = rows[lab]
                same = same[(same >= r0) & (same < r1)] - r0
                sim.index_fill_(0, same, float("-inf"))  # same pseudo class: not a negative
                if not fixed:  # rescale the running sums to a new row max
                    m_new = torch.maximum(mb, sim.max(1).values + mb)
                    sim.add_((mb - m_new)[:, None])
                    accb.mul_(torch.exp(mb - m_new)[:, None])
                    mb.copy_(m_new)
                accb.addmm_(sim.exp_(), nb)
        g, s = acc[:, :-1], acc[:, -1]
        ctx.save_for_backward((g / s[:, None] - p).mul_(inv_t))
        ctx.in_dtype = in_dtype
        return m + torch.log(s) - pos

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
            per = anchor_contrast(a[keep], p[keep].detach(), ya[keep], neg_feat, neg_label, temperature,
                                  chunk)
            total = total + per.sum() / (keep.sum() + 1e-12)
    return total
