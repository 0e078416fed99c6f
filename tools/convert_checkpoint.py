#!/usr/bin/env python
"""Convert a checkpoint saved by the UniMatch, CPS or CAC release into a seg_ssl checkpoint.

    python tools/convert_checkpoint.py --from unimatch best.pth runs/unimatch_release.pth
    python tools/eval.py configs/voc_unimatch.yaml runs/unimatch_release.pth data.root=...

Every key is renamed by an explicit rule (seg_ssl/models/convert.py) and loaded strictly into the
model of the published config: configs/voc_<release>.yaml for 21 classes, cityscapes_<release>.yaml
for 19, or --config. The result holds the weights and that config (no optimizer state), and is
accepted by tools/eval.py, tools/infer.py and load_from=.
"""
import argparse
import os

from _common import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="release", required=True, choices=["unimatch", "cps", "cac"])
    p.add_argument("src", help="the release's checkpoint")
    p.add_argument("dst", help="the seg_ssl checkpoint to write")
    p.add_argument("--config", help="the config whose model receives the weights (default: the published "
                   "VOC or Cityscapes config of the release, by the checkpoint's class count)")
    p.add_argument("overrides", nargs="*", help="dotted key=value for the config")
    args = p.parse_intermixed_args(argv)

    from seg_ssl.config import load_config
    from seg_ssl.errors import ConfigError
    from seg_ssl.engine.checkpoint import save_atomic
    from seg_ssl.methods import build_method
    from seg_ssl.models.convert import ARCH, from_release, num_classes_of, release_state
    from seg_ssl.models.weights import load_strict
    from seg_ssl.safe_load import NUMPY_SCALARS, read_pth

    # a release file holds NumPy scalars (its best mIoU) beside plain data: nothing else is built
    raw = read_pth(args.src, f"{args.release} checkpoint", allow=NUMPY_SCALARS)
    state = from_release(release_state(raw, args.release, args.src), args.release)
    config = args.config
    if config is None:
        classes = num_classes_of(release_state(raw, args.release, args.src), args.release)
        dataset = {21: "voc", 19: "cityscapes"}.get(classes)
        if dataset is None:
            raise ConfigError(f"{args.src} has {classes} classes, neither VOC's 21 nor Cityscapes' 19: give --config")
        config = os.path.join(ROOT, "configs", f"{dataset}_{args.release}.yaml")
    cfg = load_config(config, args.overrides)
    if cfg.model.arch != ARCH[args.release]:
        raise ConfigError(f"{config}: model.arch is {cfg.model.arch!r}, but a {args.release} checkpoint needs "
                          f"{ARCH[args.release]!r}")
    cfg.model.encoder_weights = None  # every weight comes from the checkpoint
    model = build_method(cfg).build_model()
    try:
        load_strict(model, state)
    except ValueError as e:
        raise ConfigError(f"{args.src} ({args.release}) does not fit {config}: {e}") from None
    save_atomic({"model": model.state_dict(), "config": cfg.to_dict(),
                 "converted_from": {"release": args.release, "file": os.path.abspath(args.src)}}, args.dst)
    print(f"{args.src} ({args.release}, {len(state)} tensors) -> {args.dst}, model of {os.path.relpath(config)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
