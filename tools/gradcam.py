#!/usr/bin/env python
"""Grad-CAM on the segmenter for one class: PNGs of the heat map over the image.

    python tools/gradcam.py CONFIG CHECKPOINT --image IMG|DIR --class NAME|INDEX [--layer encoder.layer4]
                            [--out DIR] [key=value ...]

The target is the class's logits summed over the pixels predicted as that class (grad-cam's
SemanticSegmentationTarget); the default layer is the encoder's last block. Writes
NAME_cam_<class>.png (heat over image, the predicted class outline in white) to --out.
"""
import argparse
import os

from _common import image_files, run_cli


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--image", required=True)
    p.add_argument("--class", dest="cls", required=True)
    p.add_argument("--layer", default=None)
    p.add_argument("--out", default="gradcam")
    args = p.parse_intermixed_args()
    import cv2
    import numpy as np
    from PIL import Image
    from seg_ssl.config import ConfigError, load_config
    from seg_ssl.data.dataset import load_image
    from seg_ssl.data.transforms import normalize
    from seg_ssl.engine.loading import load_for_eval
    from seg_ssl.viz.gradcam import gradcam_map
    from seg_ssl.viz.overlay import heat_overlay

    cfg = load_config(args.config, args.overrides)
    names = cfg.data.class_names or [str(i) for i in range(cfg.data.num_classes)]
    if args.cls.isdigit() and int(args.cls) < cfg.data.num_classes:
        k = int(args.cls)
    elif args.cls in names:
        k = names.index(args.cls)
    else:
        raise ConfigError(f"--class {args.cls!r}: expected an index below {cfg.data.num_classes} or one of {names}")
    files = image_files(args.image, cfg.data, "--image")
    _, _, method = load_for_eval(cfg, args.checkpoint)
    model = method.model.branch1 if hasattr(method.model, "branch1") else method.model
    os.makedirs(args.out, exist_ok=True)
    for path in files:
        image = load_image(path)
        try:
            heat, pred = gradcam_map(model, normalize(image, cfg.data.mean, cfg.data.std), k, args.layer)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        out = heat_overlay(image, heat)
        region = (pred == k).astype(np.uint8)
        out[(region - cv2.erode(region, np.ones((3, 3), np.uint8))) > 0] = 255  # the class outline
        stem = os.path.splitext(os.path.basename(path))[0]
        Image.fromarray(out).save(os.path.join(args.out, f"{stem}_cam_{names[k]}.png"))
        print(f"{stem}: {names[k]} on {int((pred == k).sum())} px, cam mean {heat.mean():.3f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
