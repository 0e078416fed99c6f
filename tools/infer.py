#!/usr/bin/env python
"""Predict masks for an image, a folder or a split list (.txt of ids): writes NAME.png (class ids),
NAME_color.png and NAME_overlay.png to --out (the image with each predicted region outlined in its
class colour, beside the prediction in full colours, and a legend).

    python tools/infer.py [CONFIG] CHECKPOINT --input IMG|DIR|LIST.txt --out DIR [--limit N] [key=value ...]

Without CONFIG the config stored in the checkpoint is used.
"""
import argparse
import os

from _common import add_model_args, image_files, model_config, run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=0, help="at most N images (0: all)")
    args = p.parse_intermixed_args(argv)

    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from PIL import Image

    from seg_ssl.data.classes import class_names, first_class_is_background
    from seg_ssl.data.dataset import load_image
    from seg_ssl.data.transforms import normalize
    from seg_ssl.engine.loading import load_for_eval
    from seg_ssl.evaluation.evaluator import predict_kwargs
    from seg_ssl.evaluation.inference import predict_probs
    from seg_ssl.viz.overlay import annotated_figure, colorize, get_palette, side_by_side

    cfg, checkpoint = model_config(args)
    files = image_files(args.input, cfg.data)
    if args.limit:
        files = files[:args.limit]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_for_eval(cfg, checkpoint, device)
    predict_fn, divisor = loaded.predict, loaded.size_divisor
    lut = get_palette(cfg.data.palette, cfg.data.ignore_index)
    names = class_names(cfg.data.class_names, cfg.data.num_classes)
    skip = (0,) if first_class_is_background(cfg.data.class_names) else ()  # no outline around the background
    os.makedirs(args.out, exist_ok=True)
    with torch.no_grad():
        for path in files:
            image = load_image(path)
            x = normalize(image, cfg.data.mean, cfg.data.std)[None].to(device)
            pred = predict_probs(predict_fn, x, size_divisor=divisor, **predict_kwargs(cfg)).argmax(1)[0]
            mask = pred.cpu().numpy().astype(np.uint8)
            stem = os.path.splitext(os.path.basename(path))[0]
            Image.fromarray(mask, mode="L").save(os.path.join(args.out, stem + ".png"))
            Image.fromarray(colorize(mask, lut)).save(os.path.join(args.out, stem + "_color.png"))
            present = {names[c]: lut[c] for c in np.unique(mask)}
            # full-strength colours (outlines on the image, the mask beside it): what the legend shows
            fig = annotated_figure(side_by_side(image, mask, lut, skip), f"{stem}: prediction "
                                   "(outlines on the image | classes)", legend=present)
            fig.savefig(os.path.join(args.out, stem + "_overlay.png"))
            plt.close(fig)
    print(f"wrote {len(files)} predictions to {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
