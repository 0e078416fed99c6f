#!/usr/bin/env python
"""Grad-CAM on the segmenter for one class: PNGs of the heat map over the image.

    python tools/gradcam.py [CONFIG] CHECKPOINT --image IMG|DIR|LIST.txt --class NAME|INDEX
                            [--layer encoder.layer4] [--limit N] [--out DIR] [key=value ...]

The target is the class's logits summed over the pixels predicted as that class (grad-cam's
SemanticSegmentationTarget); the default layer is the encoder's deepest stage (encoder.layer4 of a
ResNet, encoder.model.blocks.6 of a timm EfficientNet); a wrong --layer lists the usable ones. Writes
NAME_cam_<class>.png (heat over image, the predicted class outline in white, a title and a colour
bar) to --out. A map that is zero everywhere is reported: either the class is predicted nowhere in
the image, or every pixel's weighted activation at that layer is negative (an earlier stage, which
the warning names, often shows it).
"""
import argparse
import os

from _common import add_model_args, image_files, model_config, run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--image", required=True)
    p.add_argument("--class", dest="cls", required=True)
    p.add_argument("--layer", default=None)
    p.add_argument("--limit", type=int, default=0, help="at most N images (0: all)")
    p.add_argument("--out", default="gradcam")
    args = p.parse_intermixed_args(argv)
    import sys

    import cv2
    import matplotlib.pyplot as plt
    import numpy as np

    from seg_ssl.data.classes import class_names
    from seg_ssl.data.dataset import load_image
    from seg_ssl.data.transforms import normalize
    from seg_ssl.engine.loading import load_for_eval
    from seg_ssl.errors import ConfigError
    from seg_ssl.viz.gradcam import default_layer, earlier_layer, gradcam_map, resolve_layer, zero_map_reason
    from seg_ssl.viz.overlay import annotated_figure, heat_overlay

    cfg, checkpoint = model_config(args)
    names = class_names(cfg.data.class_names, cfg.data.num_classes)
    if args.cls.isdigit() and int(args.cls) < cfg.data.num_classes:
        k = int(args.cls)
    elif args.cls in names:
        k = names.index(args.cls)
    else:
        raise ConfigError(f"--class {args.cls!r}: expected an index below {cfg.data.num_classes} or one of "
                          f"{names}")
    files = image_files(args.image, cfg.data, "--image")
    if args.limit:
        files = files[:args.limit]
    loaded = load_for_eval(cfg, checkpoint)
    model = loaded.method.network(loaded.model)
    layer = args.layer or default_layer(model)
    try:
        resolve_layer(model, layer)  # a wrong --layer is one line listing the usable names, before any image
    except ValueError as e:
        raise ConfigError(str(e)) from None
    os.makedirs(args.out, exist_ok=True)
    for path in files:
        image = load_image(path)
        try:
            heat, pred = gradcam_map(model, normalize(image, cfg.data.mean, cfg.data.std), k, layer)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        out = heat_overlay(image, heat)
        region = (pred == k).astype(np.uint8)
        out[(region - cv2.erode(region, np.ones((3, 3), np.uint8))) > 0] = 255  # the class outline
        stem = os.path.splitext(os.path.basename(path))[0]
        area = int(region.sum())
        fig = annotated_figure(out, f"{stem}: Grad-CAM of {names[k]} at {layer} ({area} px predicted)",
                               heat_scale=True)
        fig.savefig(os.path.join(args.out, f"{stem}_cam_{names[k]}.png"))
        plt.close(fig)
        print(f"{stem}: {names[k]} on {area} px, cam mean {heat.mean():.3f}")
        why = zero_map_reason(heat, area, names[k], layer, earlier_layer(model, layer))
        if why:
            print(f"warning: {stem}: the Grad-CAM map is zero everywhere: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
