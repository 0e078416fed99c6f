#!/usr/bin/env python
"""Evaluate a checkpoint, or score a folder of predicted index PNGs against label PNGs.

    python tools/eval.py [CONFIG] CHECKPOINT [key=value ...] [--out metrics.json]   (no CONFIG: the checkpoint's)
    torchrun --nproc_per_node=2 tools/eval.py CONFIG CHECKPOINT     (same numbers, faster)
    python tools/eval.py --pred-dir P --gt-dir G --num-classes K [--ignore-index 255] [--out m.json]

Prints per-class IoU/Acc and aAcc/mIoU/mAcc in percent. --out writes fractions in [0, 1], with
null for classes absent from both prediction and ground truth.
"""
import argparse
import json
import os
import sys

from _common import config_and_checkpoint, run_cli


def score_folders(pred_dir, gt_dir, num_classes, ignore_index):
    import numpy as np
    import torch
    from seg_ssl.config import ConfigError
    from seg_ssl.data.dataset import load_label
    from seg_ssl.evaluation.metrics import confusion_matrix, metrics_from_confusion
    for d in (pred_dir, gt_dir):
        if not os.path.isdir(d):
            raise ConfigError(f"not a directory: {d}")
    gts = sorted(f for f in os.listdir(gt_dir) if f.lower().endswith(".png"))
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
    return metrics_from_confusion(cm.numpy(), unpredicted)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?")
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--pred-dir")
    p.add_argument("--gt-dir")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--ignore-index", type=int, default=255)
    p.add_argument("--out", help="write metrics as JSON")
    args = p.parse_intermixed_args(argv)

    from seg_ssl.evaluation.metrics import format_table, to_json
    names = None
    is_main = True
    if args.pred_dir or args.gt_dir:
        if not (args.pred_dir and args.gt_dir and args.num_classes):
            p.error("--pred-dir, --gt-dir and --num-classes go together")
        metrics = score_folders(args.pred_dir, args.gt_dir, args.num_classes, args.ignore_index)
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
            with open(args.out, "w") as f:
                json.dump(to_json(metrics), f, indent=1)
    return 0


if __name__ == "__main__":
    run_cli(main)
