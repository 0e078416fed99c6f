"""The GPU paths in one run, for the day a GPU is lent: every method's published VOC network at its
published crop and per-GPU batch, on synthetic VOC-size images, under fp32, bf16 and fp16.

Per method and precision: seconds per training step and images per second (labeled + unlabeled
images a step trains on), and peak CUDA memory; per method: the loss over ``--loss-iters``
iterations (bf16, the setting a GPU user would train with), which must fall. One table (Markdown)
on stdout and in ``--out``. Each step runs every term of its method (the iteration counter is past
every warm-up), on batches already on the device, so the figures are the step's, not the loader's.

    bash benchmarks/gpu_check.sh                  # on a GPU (sized for under 8 minutes; not yet run on one)
    bash benchmarks/gpu_check.sh --dry            # anywhere: tiny sizes, a few steps (the test runs it)

The networks start from random weights (the ImageNet files are not on a lent machine; speed and
memory do not depend on them). Synthetic labels are 25-pixel blocks of random classes: a network
can only learn their class frequencies, so the loss falls, but slowly.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from seg_ssl.config import load_config  # noqa: E402
from seg_ssl.engine.trainer import Trainer, to_device  # noqa: E402
from throughput import fake_voc, peak_memory_mib  # noqa: E402

# method -> (config, GPUs the release trained on: the per-GPU batch is the config's global batch / GPUs)
PUBLISHED = {
    "labeled-only": ("configs/voc_cps_sup.yaml", 4),  # the CPS twin: the same network and batch
    "CPS+CutMix": ("configs/voc_cps.yaml", 4),        # voc_cps.yaml: "its effective step on 4 GPUs"
    "CAC": ("configs/voc_cac.yaml", 2),               # voc_cac.yaml: "2 GPUs x (4 labeled + 4 unlabeled)"
    "UniMatch": ("configs/voc_unimatch.yaml", 4),     # voc_unimatch.yaml: "(2 + 2 on 4 GPUs)"
    "FixMatch": ("configs/voc_fixmatch.yaml", 4),     # voc_fixmatch.yaml: "(2 + 2 on 4 GPUs)"
    "UniMatch V2": ("configs/voc_unimatch_v2.yaml", 4),  # DINOv2-S + DPT at 518: "4 per GPU x 4 GPUs"
    "UniMatch V2, B": ("configs/voc_unimatch_v2.yaml", 4, ["model.encoder=dinov2_base"]),  # the README's
}
PRECISIONS = ("fp32", "bf16", "fp16")
AMP = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}


def build_trainer(method: str, precision: str, data_root: str, work_dir: str, dry: bool) -> Trainer:
    config, gpus, *network = PUBLISHED[method]
    base = load_config(os.path.join(ROOT, config), [f"data.root={ROOT}"])  # only for its batch sizes
    per_gpu = max(2, base.data.batch_size // gpus)  # BatchNorm needs 2+ samples
    overrides = [f"work_dir={work_dir}", "resume=null", f"data.root={data_root}",
                 "model.encoder_weights=null", f"train.amp={AMP[precision]}", "train.eval_interval=0",
                 "data.num_workers=2", f"data.batch_size={per_gpu}", f"data.unlabeled_batch_size={per_gpu}",
                 "data.labeled_list=splits/1_8/labeled.txt", "data.unlabeled_list=splits/1_8/unlabeled.txt",
                 "data.val_list=ImageSets/Segmentation/val.txt"]
    if dry:  # tiny: a CPU runs every path in seconds
        overrides += ["data.crop_size=32", "train.threads=1", "data.num_workers=0"]
        if method == "CAC":
            overrides += ["cac.selected_num=64"]
        if method.startswith("UniMatch V2"):  # two blocks of the ViT: the paths, not the size
            overrides += ["model.vit_blocks=2", "data.crop_size=28"]
    return Trainer(load_config(os.path.join(ROOT, config), [*overrides, *(network[0] if network else [])]))


def measure(method: str, precision: str, a, data_root: str, tmp: str, curve: bool) -> dict:
    """Step time, images/s and peak memory of ``method`` under ``precision``; with ``curve``, then
    the labeled loss over ``--loss-iters`` more iterations of the same run."""
    trainer = build_trainer(method, precision, data_root, os.path.join(tmp, f"{method}_{precision}"), a.dry)
    try:
        cuda = trainer.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        lab, unl = trainer.batch_streams()
        batches = [(to_device(next(lab), trainer.device),
                    to_device(next(unl), trainer.device) if unl is not None else None)
                   for _ in range(min(4, a.warmup + a.steps))]
        trainer.progress.iteration = 10 ** 6  # past every warm-up: every term of the method runs
        for i in range(a.warmup):
            trainer.step(*batches[i % len(batches)])
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(trainer.device)
        t0 = time.perf_counter()
        for i in range(a.steps):
            losses = trainer.step(*batches[i % len(batches)])
        sync()
        step_s = (time.perf_counter() - t0) / a.steps
        if "skipped" in losses:
            raise RuntimeError(f"{method} {precision}: the step was skipped (non-finite loss)")
        # images a step trains on: the labeled and unlabeled batches (not the extra images a CutMix
        # method draws to paste from)
        n_lab = trainer.sizes["labeled_per_process"]
        n_unl = trainer.sizes["unlabeled_per_process"] if trainer.unlabeled is not None else 0
        row = {"method": method, "precision": precision, "step_s": step_s, "img_s": (n_lab + n_unl) / step_s,
               "peak_mib": peak_memory_mib(trainer.device), "crop": trainer.cfg.data.crop_size,
               "batch": f"{n_lab}+{n_unl}"}
        if curve:  # fresh batches every step from here
            row["curve"] = loss_curve(trainer, lab, unl, a.loss_iters)
        return row
    finally:
        trainer.close()
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def loss_curve(trainer: Trainer, lab, unl, iters: int) -> dict:
    """The labeled term over ``iters`` iterations: the mean of the first and of the last fifth."""
    sup = []
    for _ in range(iters):
        losses = trainer.step(to_device(next(lab), trainer.device),
                              to_device(next(unl), trainer.device) if unl is not None else None)
        # CPS: one per network
        sup.append(sum(float(v) for k, v in losses.items() if k in ("sup", "sup1", "sup2")))
    k = max(1, len(sup) // 5)
    first, last = statistics.mean(sup[:k]), statistics.mean(sup[-k:])
    return {"first": first, "last": last, "falls": last < first}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry", action="store_true", help="tiny sizes and few steps, on any device")
    p.add_argument("--methods", nargs="+", default=list(PUBLISHED), choices=list(PUBLISHED))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; --dry 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; --dry 0)")
    p.add_argument("--loss-iters", type=int, default=None, help="default 200; --dry 2")
    p.add_argument("--loss-precision", default=None, choices=PRECISIONS,
                   help="of the loss curve (it continues that precision's timed run): default bf16 (what a "
                        "GPU user trains with); --dry fp32 (a CPU without bf16 units runs R50 in bf16 ~10x "
                        "slower than in fp32)")
    p.add_argument("--out", default=None, help="also write the table here")
    a = p.parse_args(argv)
    a.steps = a.steps or (1 if a.dry else 20)
    a.warmup = a.warmup if a.warmup is not None else (0 if a.dry else 5)
    a.loss_iters = a.loss_iters or (2 if a.dry else 200)
    a.loss_precision = a.loss_precision or ("fp32" if a.dry else "bf16")
    if not torch.cuda.is_available() and not a.dry:
        print("gpu_check: no CUDA device here; run it on a GPU, or with --dry", file=sys.stderr)
        return 2
    t_start = time.time()
    rows, curves = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        data_root = os.path.join(tmp, "voc")
        fake_voc(data_root, n=16 if a.dry else 48, size=(100, 125) if a.dry else (375, 500))
        for method in a.methods:
            for precision in a.precisions:
                rows.append(measure(method, precision, a, data_root, tmp,
                                    curve=precision == a.loss_precision))
                r = rows[-1]
                print(f"{method} {precision}: {r['step_s']:.3f} s/step, {r['img_s']:.1f} img/s, "
                      f"peak {r['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
                if "curve" in r:
                    curves[method] = r.pop("curve")
            if method not in curves:  # the curve's precision was not timed: a run of its own
                curves[method] = measure(method, a.loss_precision, a, data_root, tmp, curve=True)["curve"]
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available() and not a.dry else
              f"{platform.machine()} CPU, {os.cpu_count()} cores")
    mem = "peak CUDA allocated MiB" if torch.cuda.is_available() else "peak RSS MiB (the process)"
    lines = [f"{'dry run (tiny sizes), ' if a.dry else ''}{device}, torch {torch.__version__}, "
             f"{a.steps} timed steps after {a.warmup}; {time.time() - t_start:.0f} s in all", "",
             f"| method | crop | batch per GPU | precision | s/step | img/s | {mem} |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['crop']} | {r['batch']} | {r['precision']} | {r['step_s']:.3f} | "
              f"{r['img_s']:.1f} | {r['peak_mib']:.0f} |" for r in rows]
    k = max(1, a.loss_iters // 5)
    lines += ["",
              f"| method | labeled loss, first {k} of {a.loss_iters} its ({a.loss_precision}) | last {k} its "
              f"| falls |", "|---|---|---|---|"]
    lines += [f"| {m} | {c['first']:.4f} | {c['last']:.4f} | {'yes' if c['falls'] else 'NO'} |"
              for m, c in curves.items()]
    table = "\n".join(lines)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")
    return 0 if all(c["falls"] for c in curves.values()) or a.dry else 1


if __name__ == "__main__":
    sys.exit(main())
