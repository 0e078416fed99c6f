"""Overlap-region features of crop pairs, their alignment/uniformity, and a joint t-SNE figure."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from seg_ssl.data.overlap import sample_overlapping_crops
from seg_ssl.methods.cac import overlap_pairs
from seg_ssl.models.segmentor import logits_and_projection


def alignment(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Mean squared distance of matched features (lower: the two views agree)."""
    return float((f1 - f2).pow(2).sum(1).mean()) if f1.shape[0] else float("nan")


def uniformity(f: torch.Tensor, t: float = 2.0, max_points: int = 4096) -> float:
    """log mean exp(-t |fi - fj|^2) over distinct pairs (lower: spread over the sphere)."""
    if f.shape[0] > max_points:
        f = f[torch.randperm(f.shape[0], generator=torch.Generator().manual_seed(0))[:max_points]]
    d = torch.pdist(f, p=2).pow(2)
    return float(torch.log(torch.exp(-t * d).mean())) if d.numel() else float("nan")


@torch.no_grad()
def view_crop(crop: int, h: int, w: int, stride: int = 8) -> int:
    """The crop size for the two views of an h x w image: ``crop``, unless it covers the whole image,
    where both views could only be the same crop (alignment 0 by construction); then 3/4 of the
    shorter side, a multiple of the stride."""
    if crop < min(h, w):
        return crop
    return max(stride, min(h, w) * 3 // 4 // stride * stride)


@torch.no_grad()
def overlap_features(model, image: torch.Tensor, label: torch.Tensor, crop: int, iou_bound,
                     rng: np.random.Generator, ignore_index: int = 255, space: str = "decoder"):
    """For one normalised image (3, H, W) and its label (H, W): draw an overlapping crop pair
    (no flips, no photometric change), return the overlap features from both crops (n, D) and
    their ground-truth classes (n,). ``space``: ``decoder`` (the L2-normalised decoder features
    pooled to stride 8, which every model has, so a labeled-only and a CAC model are compared in
    the same space) or ``projector`` (CAC's contrastive embedding; a model without one is an error)."""
    if space not in FEATURE_SPACES:
        raise ValueError(f"feature space {space!r}: expected one of {list(FEATURE_SPACES)}")
    c, h, w = image.shape
    ph, pw = max(h, crop), max(w, crop)
    img = F.pad(image, (0, pw - w, 0, ph - h))
    lab = F.pad(label, (0, pw - w, 0, ph - h), value=ignore_index)
    pair = sample_overlapping_crops(ph, pw, crop, iou_bound, 8, rng)
    crops = torch.stack([img[:, pair.top1:pair.top1 + crop, pair.left1:pair.left1 + crop],
                         img[:, pair.top2:pair.top2 + crop, pair.left2:pair.left2 + crop]])
    labs = torch.stack([lab[pair.top1:pair.top1 + crop, pair.left1:pair.left1 + crop],
                        lab[pair.top2:pair.top2 + crop, pair.left2:pair.left2 + crop]])
    if space == "projector":
        if model.projector is None:
            raise ValueError("--space projector: this model has no projector (labeled-only models have "
                             "none); use --space decoder to compare models")
        z = logits_and_projection(model, crops)["proj"]
    else:
        z = F.normalize(model.at_stride_8(model.features(crops), crop, crop)[..., :crop // 8, :crop // 8],
                        dim=1)
    cls = labs[:, 4::8, 4::8]  # the label at each stride-8 cell's centre
    valid = cls != ignore_index
    box = lambda b: torch.tensor([b], dtype=torch.long)  # noqa: E731
    f1, f2, y1, y2 = overlap_pairs(z[:1], z[1:], cls[:1, None].float(), cls[1:, None].float(),
                                   valid[:1], valid[1:], box(pair.box1), box(pair.box2), 8)
    return f1, f2, y1[:, 0].long()


def view_plan(val, images: int, crop: int, seed: int = 0) -> list[tuple[int, int]]:
    """``(val index, crop of its two views)`` for ``images`` val images drawn with ``seed`` (the
    same for every model compared)."""
    picks = np.random.default_rng(seed).permutation(len(val))[:images]
    return [(int(i), view_crop(crop, *val[int(i)]["image"].shape[-2:])) for i in picks]


@torch.no_grad()
def set_overlap_features(model, val, plan, iou_bound, ignore_index: int = 255, space: str = "decoder",
                         seed: int = 0, max_points: int = 1500):
    """The overlap features ``(f1, f2, y)`` of every image of ``plan`` (:func:`view_plan`), one crop
    pair each drawn with ``seed``; at most ``max_points`` pixels, a seeded subset."""
    rng = np.random.default_rng(seed)
    parts = [overlap_features(model, val[i]["image"], val[i]["label"], crop, iou_bound, rng, ignore_index,
                              space) for i, crop in plan]
    f1, f2, y = (torch.cat(t) for t in zip(*parts, strict=True))
    if f1.shape[0] > max_points:
        keep = torch.randperm(f1.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        f1, f2, y = f1[keep], f2[keep], y[keep]
    return f1, f2, y


FEATURE_SPACES = {"decoder": "decoder features (stride 8, L2-normalised)",
                  "projector": "projector embeddings (CAC's contrastive space)"}


def plot_tsne(panels: list, class_names, palette: np.ndarray, out_path: str, seed: int = 0,
              space: str = "decoder") -> None:
    """``panels``: list of (title, f1, f2, labels). Both crops are embedded jointly per panel.
    ``palette``: categorical colours (``overlay.categorical_palette``), one per class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for ax, (title, f1, f2, y) in zip(axes[0], panels, strict=True):
        x = torch.cat([f1, f2]).float().numpy()
        emb = TSNE(n_components=2, init="pca", random_state=seed,
                   perplexity=min(30.0, max(2.0, (len(x) - 1) / 3))).fit_transform(x)
        n = f1.shape[0]
        cols = palette[np.concatenate([y.numpy(), y.numpy()])] / 255.0
        ax.scatter(emb[:n, 0], emb[:n, 1], c=cols[:n], marker="o", s=9, label="crop 1")
        ax.scatter(emb[n:, 0], emb[n:, 1], c=cols[n:], marker="x", s=9, label="crop 2")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    present = sorted(set(int(v) for _, _, _, y in panels for v in y.tolist()))
    handles = [plt.Line2D([], [], marker="s", ls="", color=palette[c] / 255.0,
                          label=class_names[c] if class_names else str(c)) for c in present]
    # what the two markers mean: the same overlap pixel, seen in each of the two crops
    handles += [plt.Line2D([], [], marker="o", ls="", color="0.4", label="o: pixel in crop 1"),
                plt.Line2D([], [], marker="x", ls="", color="0.4", label="x: same pixel in crop 2")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8)
    fig.suptitle(f"t-SNE of {FEATURE_SPACES[space]} of the pixels two overlapping crops share; colour: "
                 f"true class", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
