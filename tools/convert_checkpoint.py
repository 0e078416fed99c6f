#!/usr/bin/env python
"""Convert a checkpoint saved by the UniMatch, CPS, CAC or UniMatch V2 release into a seg_ssl checkpoint.

    python tools/convert_checkpoint.py --from unimatch best.pth runs/unimatch_release.pth
    python tools/eval.py configs/voc_unimatch.yaml runs/unimatch_release.pth data.root=...

A UniMatch V2 checkpoint holds the student and its EMA teacher: the EMA's weights are taken (the
release's README numbers are the EMA model's), the student's with --student.

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
    p.add_argument("--from", dest="release", required=True, choices=["unimatch", "cps", "cac", "unimatch_v2"])
    p.add_argument("src", help="the release's checkpoint")
    p.add_argument("dst", help="the seg_ssl checkpoint to write")
    p.add_argument("--config", help="the config whose model receives the weights (default: the published "
                   "VOC or Cityscapes config of the release, by the checkpoint's class count)")
    p.add_argument("--student", action="store_true", help="unimatch_v2: the student's weights ('model'), "
                   "not the EMA teacher's ('model_ema')")
    p.add_argument("overrides", nargs="*", help="dotted key=value for the config")
    args = p.parse_intermixed_args(argv)

    from seg_ssl.config import load_config
    from seg_ssl.engine.checkpoint import save_atomic
    from seg_ssl.errors import ConfigError
    from seg_ssl.methods import build_method
    from seg_ssl.models.convert import FORMATS, from_release, num_classes_of, release_state
    from seg_ssl.models.weights import load_strict
    from seg_ssl.safe_load import NUMPY_SCALARS, read_pth

    # a release file holds NumPy scalars (its best mIoU) beside plain data: nothing else is built
    raw = read_pth(args.src, f"{args.release} checkpoint", allow=NUMPY_SCALARS)
    weights = release_state(raw, args.release, args.src, student=args.student)
    state = from_release(weights, args.release)
    config = args.config
    if config is None:
        classes = num_classes_of(weights, args.release)
        dataset = {21: "voc", 19: "cityscapes"}.get(classes)
        if dataset is None:
            raise ConfigError(f"{args.src} has {classes} classes, neither VOC's 21 nor Cityscapes' 19: "
                              "give --config")
        config = os.path.join(ROOT, "configs", f"{dataset}_{args.release}.yaml")
    cfg = load_config(config, args.overrides)
    arch = FORMATS[args.release].arch
    if cfg.model.arch != arch:
        raise ConfigError(f"{config}: model.arch is {cfg.model.arch!r}, but a {args.release} checkpoint "
                          f"needs {arch!r}")
    if arch == "dpt_unimatch_v2" and "encoder.pos_embed" in state:  # V2's configs default to small
        from seg_ssl.models.dinov2 import size_of
        held = size_of(state["encoder.pos_embed"].shape[-1])
        if held != cfg.model.encoder:
            raise ConfigError(f"{args.src} holds {held} weights; {config} builds model.encoder="
                              f"{cfg.model.encoder}: add model.encoder={held} (to tools/eval.py too)")
    cfg.model.encoder_weights = None  # every weight comes from the checkpoint
    # which weights the file holds (a V2 release keeps the student and its EMA teacher): the stored
    # config evaluates them (eval.model), and an EMA is an EMA whichever method the config trains
    held = ("student" if args.student else "ema") if FORMATS[args.release].student_entry else "student"
    cfg.eval["model"] = held
    cfg.train["ema"] = cfg.train.ema or held == "ema"
    model = build_method(cfg).build_model()
    try:
        load_strict(model, state)
    except ValueError as e:
        raise ConfigError(f"{args.src} ({args.release}) does not fit {config}: {e}") from None
    save_atomic({"model": model.state_dict(), "weights": held, "config": cfg.to_dict(),
                 "converted_from": {"release": args.release, "file": os.path.abspath(args.src),
                                    "weights": held}},
                args.dst)
    dropped = f", {len(weights) - len(state)} dropped by rule" if len(weights) > len(state) else ""
    print(f"{args.src} ({args.release}, {len(state)} tensors{dropped}) -> {args.dst}, "
          f"model of {os.path.relpath(config)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
