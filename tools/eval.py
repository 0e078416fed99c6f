#!/usr/bin/env python
"""Evaluate a checkpoint, or score a folder of predicted index PNGs against label PNGs.

    python tools/eval.py [CONFIG] CHECKPOINT [key=value ...] [--out metrics.json]
                         (no CONFIG: the checkpoint's)
    torchrun --nproc_per_node=2 tools/eval.py CONFIG CHECKPOINT     (same numbers, faster)
    python tools/eval.py --pred-dir P --gt-dir G --num-classes K|--config CONFIG_OR_CKPT [--list LIST.txt]
                         [--ignore-index 255] [--out m.json]

Prints per-class IoU/Acc and aAcc/mIoU/mAcc in percent, and the protocol that scored a checkpoint
(the config's eval section: eval.mode, window, stride ...; docs/release_protocols.md). Another
protocol re-scores the same checkpoint, e.g. every method under one for a comparison:

    python tools/eval.py configs/cityscapes_unimatch.yaml best.pth eval.mode=slide eval.window=800

--out writes fractions in [0, 1], with null for classes absent from both prediction and ground
truth, plus the protocol, the class names and the confusion matrix (pixel counts, rows ground
truth); OUT_confusion.csv and OUT_confusion.png (each row divided by its sum) are written beside
it. Per-class rows carry the config's class names wherever a config or checkpoint is given.
"""
import argparse
import json
import sys

from _common import add_model_args, model_config, run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--pred-dir")
    p.add_argument("--gt-dir")
    p.add_argument("--num-classes", type=int, help="with --pred-dir; default: the --config's")
    p.add_argument("--ignore-index", type=int, default=None,
                   help="with --pred-dir; default: the --config's, or 255")
    p.add_argument("--list", help="with --pred-dir: score only the ids of this split list")
    p.add_argument("--config", dest="names_from", metavar="CONFIG_OR_CKPT",
                   help="with --pred-dir: class names (and classes, ignore index) from a config or "
                   "checkpoint")
    p.add_argument("--out", help="write metrics as JSON, and beside it OUT_confusion.csv (pixel counts, "
                   "with class names) and OUT_confusion.png (row-normalised)")
    args = p.parse_intermixed_args(argv)

    from seg_ssl.evaluation.metrics import format_table, to_json
    names = None
    is_main = True
    if args.pred_dir or args.gt_dir:
        from seg_ssl.evaluation.confusion import list_ids, score_folders
        ignore = args.ignore_index
        if args.names_from:
            from seg_ssl.api import CONFIG_SUFFIXES, config_from_checkpoint
            from seg_ssl.config import load_config
            d = (load_config(args.names_from) if args.names_from.endswith(CONFIG_SUFFIXES)
                 else config_from_checkpoint(args.names_from)).data
            if args.num_classes and args.num_classes != d.num_classes:
                p.error(f"--num-classes {args.num_classes} but {args.names_from} has {d.num_classes} classes")
            args.num_classes = d.num_classes
            names = d.class_names
            ignore = d.ignore_index if ignore is None else ignore
        if not (args.pred_dir and args.gt_dir and args.num_classes):
            p.error("--pred-dir and --gt-dir go together, with --num-classes or --config")
        metrics = score_folders(args.pred_dir, args.gt_dir, args.num_classes,
                                255 if ignore is None else ignore, list_ids(args.list) if args.list else None)
    else:
        if not args.config:
            p.error("give CHECKPOINT or CONFIG CHECKPOINT, or --pred-dir/--gt-dir/--num-classes")
        from seg_ssl.data.dataset import build_split
        from seg_ssl.data.transforms import val_pipeline
        from seg_ssl.engine import dist as du
        from seg_ssl.engine.loading import load_for_eval
        from seg_ssl.evaluation.evaluator import evaluate, predict_kwargs
        cfg, checkpoint = model_config(args)
        info = du.init_distributed()
        is_main = info.is_main
        loaded = load_for_eval(cfg, checkpoint, info.device)
        predict_fn, divisor = loaded.predict, loaded.size_divisor
        val = build_split(cfg.data, "val", val_pipeline(cfg.data))
        metrics = evaluate(predict_fn, val, cfg.data.num_classes, cfg.data.ignore_index, divisor,
                           info.device, info.rank, info.world_size, cfg.data.val_batch_size,
                           progress=is_main and sys.stderr.isatty(), **predict_kwargs(cfg))
        names = cfg.data.class_names
        du.barrier()  # no rank closes its connections while another may still be sending
        du.cleanup()
    if is_main:
        print(format_table(metrics, names))
        if args.out:
            from seg_ssl.data.classes import class_names
            from seg_ssl.evaluation.confusion import save_confusion
            labels = class_names(names, len(metrics["IoU"]))
            cm = metrics["confusion"]
            cm = cm.numpy() if hasattr(cm, "numpy") else cm
            with open(args.out, "w") as f:
                json.dump({**to_json(metrics), "class_names": labels, "confusion": cm.tolist()}, f, indent=1)
            csv_path, png = save_confusion(cm, labels, args.out)
            print(f"wrote {args.out}, {csv_path} and {png}")
    return 0


if __name__ == "__main__":
    run_cli(main)
