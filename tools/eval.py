#!/usr/bin/env python
"""Evaluate a checkpoint, or score a folder of predicted index PNGs against label PNGs.

    python tools/eval.py [CONFIG] CHECKPOINT [key=value ...] [--out metrics.json]   (no CONFIG: the checkpoint's)
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
import os
import sys

from _common import config_and_checkpoint, run_cli


def score_folders(pred_dir, gt_dir, num_classes, ignore_index, subset=None):
    import numpy as np
    import torch
    from seg_ssl.errors import ConfigError
    from seg_ssl.data.dataset import load_label
    from seg_ssl.evaluation.metrics import confusion_matrix, metrics_from_confusion
    for d in (pred_dir, gt_dir):
        if not os.path.isdir(d):
            raise ConfigError(f"not a directory: {d}")
    gts = sorted(f for f in os.listdir(gt_dir) if f.lower().endswith(".png"))
    if subset is not None:  # only the listed ids (a split list), each of which must have a label
        have = {os.path.splitext(f)[0]: f for f in gts}
        absent = [i for i in subset if i not in have]
        if absent:
            raise ConfigError(f"{len(absent)} listed ids have no label PNG in {gt_dir} (e.g. {absent[:3]})")
        gts = [have[i] for i in dict.fromkeys(subset)]
    if not gts:
        raise ConfigError(f"no label PNGs in {gt_dir}")
    missing = [f for f in gts if not os.path.isfile(os.path.join(pred_dir, f))]
    if missing:
        raise ConfigError(f"{len(missing)} labels have no prediction of the same name in {pred_dir} "
                          f"(e.g. {missing[:3]})")
    cm = torch.zeros((num_classes, num_classes), dtype=torch.int64)
    unpredicted = np.zeros(num_classes, np.int64)
    for f in gts:
        gt = load_label(os.path.join(gt_dir, f), num_classes, ignore_index)
        pred = load_label(os.path.join(pred_dir, f), num_classes, ignore_index)
        if pred.shape != gt.shape:
            raise ConfigError(f"{f}: prediction is {pred.shape[::-1]} but label is {gt.shape[::-1]}")
        # a predicted ignore index is no class: a miss for the true class, no false positive
        none = (pred == ignore_index) & (gt != ignore_index)
        unpredicted += np.bincount(gt[none], minlength=num_classes)
        gt = np.where(none, ignore_index, gt)
        cm += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), num_classes, ignore_index)
    out = metrics_from_confusion(cm.numpy(), unpredicted)
    out["confusion"] = cm
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?")
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--pred-dir")
    p.add_argument("--gt-dir")
    p.add_argument("--num-classes", type=int, help="with --pred-dir; default: the --config's")
    p.add_argument("--ignore-index", type=int, default=None, help="with --pred-dir; default: the --config's, or 255")
    p.add_argument("--list", help="with --pred-dir: score only the ids of this split list")
    p.add_argument("--config", dest="names_from", metavar="CONFIG_OR_CKPT",
                   help="with --pred-dir: class names (and classes, ignore index) from a config or checkpoint")
    p.add_argument("--out", help="write metrics as JSON, and beside it OUT_confusion.csv (pixel counts, "
                   "with class names) and OUT_confusion.png (row-normalised)")
    args = p.parse_intermixed_args(argv)

    from seg_ssl.evaluation.metrics import format_table, to_json
    names = None
    is_main = True
    if args.pred_dir or args.gt_dir:
        from seg_ssl.evaluation.confusion import list_ids
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
        metrics = score_folders(args.pred_dir, args.gt_dir, args.num_classes, 255 if ignore is None else ignore,
                                list_ids(args.list) if args.list else None)
    else:
        if not args.config:
            p.error("give CHECKPOINT or CONFIG CHECKPOINT, or --pred-dir/--gt-dir/--num-classes")
        from seg_ssl.data.dataset import build_split
        from seg_ssl.data.transforms import val_pipeline
        from seg_ssl.engine import dist as du
        from seg_ssl.engine.loading import load_for_eval
        from seg_ssl.evaluation.evaluator import evaluate, predict_kwargs
        cfg, checkpoint = config_and_checkpoint(args.config, args.checkpoint, args.overrides)
        info = du.init_distributed()
        is_main = info.is_main
        predict_fn, divisor, _ = load_for_eval(cfg, checkpoint, info.device)
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
            from seg_ssl.evaluation.confusion import save_confusion
            k = len(metrics["IoU"])
            labels = list(names) if names else [str(i) for i in range(k)]
            cm = metrics["confusion"].numpy() if hasattr(metrics["confusion"], "numpy") else metrics["confusion"]
            with open(args.out, "w") as f:
                json.dump({**to_json(metrics), "class_names": labels, "confusion": cm.tolist()}, f, indent=1)
            csv_path, png = save_confusion(cm, labels, args.out)
            print(f"wrote {args.out}, {csv_path} and {png}")
    return 0


if __name__ == "__main__":
    run_cli(main)
