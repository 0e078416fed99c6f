#!/usr/bin/env python
"""t-SNE of overlap-region features: for a few val images draw an overlapping crop pair, take the
features of the shared region from both crops, embed them jointly, colour by ground-truth class,
one panel per checkpoint (e.g. baseline vs CAC). Also prints alignment (mean squared distance of
matched features; lower = the two contexts agree) and uniformity (log mean Gaussian potential;
lower = more spread).

    python tools/tsne.py CONFIG CKPT [CKPT ...] [--images 8] [--out tsne.png] [key=value ...]

CONFIG gives the data (val list, crop size, cac.iou_bound); each checkpoint's model is rebuilt from
the config saved inside it. Every panel uses the same feature space (--space): the decoder features
(stride 8, L2-normalised) by default, which a labeled-only and a CAC model both have, so their
panels compare like with like; --space projector shows CAC's contrastive embedding (only for
models with a projector). Colours are a categorical palette (tab10), one per true class; o is a
pixel's feature in crop 1, x the same pixel's in crop 2.
"""
import argparse
import os
import re

from _common import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoints", nargs="+", help="checkpoints, then optional key=value overrides")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--max-points", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="tsne.png")
    p.add_argument("--space", default="decoder", choices=["decoder", "projector"],
                   help="decoder: the decoder features every model has (default, comparable across models); "
                        "projector: CAC's embedding (models without one are refused)")
    args = p.parse_intermixed_args(argv)
    # a checkpoint path may hold "=" (every sweep cell's folder does): an existing file, or anything
    # not of the form dotted.key=value, is a checkpoint
    is_override = [not os.path.isfile(c) and re.match(r"^[A-Za-z_][\w.]*=", c) is not None
                   for c in args.checkpoints]
    ckpts = [c for c, o in zip(args.checkpoints, is_override, strict=True) if not o]
    overrides = [c for c, o in zip(args.checkpoints, is_override, strict=True) if o]

    import torch

    from seg_ssl.config import ConfigError, from_dict, load_config
    from seg_ssl.data.dataset import build_split
    from seg_ssl.data.transforms import val_pipeline
    from seg_ssl.engine.checkpoint import load_checkpoint
    from seg_ssl.engine.loading import load_for_eval
    from seg_ssl.viz.overlay import categorical_palette
    from seg_ssl.viz.tsne import (
        FEATURE_SPACES,
        alignment,
        plot_tsne,
        set_overlap_features,
        uniformity,
        view_plan,
    )

    cfg = load_config(args.config, overrides)
    val = build_split(cfg.data, "val", val_pipeline(cfg.data))
    plan = view_plan(val, args.images, cfg.data.crop_size, args.seed)
    if any(crop != cfg.data.crop_size for _, crop in plan):
        h, w = val[plan[0][0]]["image"].shape[-2:]
        print(f"note: data.crop_size {cfg.data.crop_size} covers whole images ({h}x{w}), where both views "
              f"would be the same crop; views of {min(c for _, c in plan)} px are used there")
    panels = []
    for path in ckpts:
        ckpt = load_checkpoint(path)
        model = load_for_eval(from_dict(ckpt["config"], path, stored=True), path, ckpt=ckpt).model
        try:
            f1, f2, y = set_overlap_features(model, val, plan, cfg.cac.iou_bound, cfg.data.ignore_index,
                                             args.space, args.seed, args.max_points)
        except ValueError as e:
            raise ConfigError(f"{path}: {e}") from None
        al, un = alignment(f1, f2), uniformity(torch.cat([f1, f2]))
        name = os.path.basename(os.path.dirname(os.path.abspath(path))) + "/" + os.path.basename(path)
        print(f"{name}: {f1.shape[0]} overlap pixels, alignment {al:.4f}, uniformity {un:.4f}")
        panels.append((f"{name}\nalign {al:.3f}  unif {un:.3f}", f1, f2, y))
    plot_tsne(panels, cfg.data.class_names, categorical_palette(cfg.data.num_classes), args.out, args.seed,
              args.space)
    print(f"feature space: {FEATURE_SPACES[args.space]}, the same for every checkpoint")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
