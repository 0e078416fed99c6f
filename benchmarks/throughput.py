"""Training and evaluation throughput, and peak memory, per method.

Each measurement runs in its own process, so its peak memory is its own: CPU peak RSS (which
includes ~0.3-0.5 GiB of Python and torch) or CUDA peak allocated memory. Three figures per method:

- loader: batches per second of the data streams alone (DataLoader workers, augmentation);
- step: seconds per training step on batches already loaded (model, losses, optimiser);
- train: seconds per iteration of the real loop (loader and step together), and peak memory.

The loader keeps up when its time per batch is well below the step's. Evaluation: images per
second for whole-image and sliding-window inference.

    python benchmarks/throughput.py                       # digits scale on this machine (CPU)
    python benchmarks/throughput.py --scale voc --crop 512 --settings fp32 bf16   # VOC scale, R50 (GPU)
    python benchmarks/throughput.py --settings fp32 channels_last compile bf16 all  # the speed options

``--settings`` names execution options (``SETTINGS``); they are measured side by side: for each
method every setting in turn, so a change in the machine's load hits them alike.

VOC scale needs no download: it trains on a synthetic VOC-layout set of random images (speed and
memory do not depend on the pixels).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ssl_digits import METHODS  # noqa: E402  the digits runs are the benchmark's four methods

# execution options (seg_ssl/engine/execution.py): none changes what a step computes
SETTINGS = {
    "fp32": [],
    "channels_last": ["train.channels_last=true"],
    "compile": ["train.compile=default"],
    "bf16": ["train.amp=bf16"],
    "fp16": ["train.amp=fp16"],
    "channels_last+compile": ["train.channels_last=true", "train.compile=default"],
    "all": ["train.channels_last=true", "train.compile=default", "train.amp=bf16"],
}

CONFIGS = {
    "digits": METHODS,
    "voc": {"labeled-only": ("configs/voc_sup.yaml", []),
            "CPS": ("configs/voc_cps.yaml", ["cps.cutmix=false"]),
            "CPS+CutMix": ("configs/voc_cps.yaml", []),
            "CAC": ("configs/voc_cac.yaml", [])},
}


def fake_voc(root: str, n: int = 48, size=(375, 500)) -> None:
    """Random images and labels in the VOC layout with the split lists the VOC configs name."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClassAug", "splits/1_8", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    ids = [f"img{i:04d}" for i in range(n)]
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(f"{root}/JPEGImages/{i}.jpg")
        lab = rng.integers(0, 21, (size[0] // 25, size[1] // 25), dtype=np.uint8).repeat(25, 0).repeat(25, 1)
        Image.fromarray(lab).save(f"{root}/SegmentationClassAug/{i}.png")
    half = n // 2
    for name, part in (("splits/1_8/labeled.txt", ids[:half]), ("splits/1_8/unlabeled.txt", ids[half:]),
                       ("ImageSets/Segmentation/val.txt", ids[:8])):
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(part) + "\n")


def peak_memory_mib(device) -> float:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def measure_one(a) -> dict:
    """One method in this process: loader alone, step alone, then the real loop."""
    import torch

    from seg_ssl.config import load_config
    from seg_ssl.engine.trainer import Trainer, to_device

    config, extra = CONFIGS[a.scale][a.method]
    ov = [f"work_dir={a.work_dir}", "resume=null", "train.eval_interval=0", f"train.threads={a.threads}",
          f"data.num_workers={a.workers}", f"data.root={a.data_root}", *extra, *SETTINGS[a.setting]]
    if a.scale == "voc":
        ov += ["model.encoder_weights=null", f"data.crop_size={a.crop}", f"data.batch_size={a.batch}",
               f"data.unlabeled_batch_size={a.batch}", f"cac.selected_num={a.selected_num}"]
    ov += a.extra  # last: the caller's overrides win
    cfg = load_config(os.path.join(ROOT, config), ov)
    trainer = Trainer(cfg)
    dev = trainer.device
    setup_mib = current_rss_mib() if dev.type == "cpu" else 0.0
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    lab, unl = trainer.batch_streams()
    n, warm = a.steps, a.warmup

    t0 = time.time()  # loader alone (includes worker start-up, amortised over n + warm batches)
    batches = [(next(lab), next(unl) if unl is not None else None) for _ in range(n + warm)]
    loader_s = (time.time() - t0) / (n + warm)

    batches = [(to_device(b, dev), to_device(u, dev) if u is not None else None) for b, u in batches]
    it0 = trainer.progress.iteration = 10 ** 6  # past every warm-up: the semi-supervised terms run
    for b, u in batches[:warm]:
        trainer.step(b, u)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.time()
    for b, u in batches[warm:]:
        trainer.step(b, u)
    sync()
    step_s = (time.time() - t0) / n
    del batches

    trainer.progress.iteration = it0
    lab, unl = trainer.batch_streams()
    for _ in range(warm):
        trainer.step(to_device(next(lab), dev), to_device(next(unl), dev) if unl is not None else None)
    sync()
    t0 = time.time()
    for _ in range(n):
        trainer.step(to_device(next(lab), dev), to_device(next(unl), dev) if unl is not None else None)
    sync()
    train_s = (time.time() - t0) / n
    return {"method": a.method, "scale": a.scale, "setting": a.setting, "crop": cfg.data.crop_size,
            "batch": f"{cfg.data.batch_size}+{cfg.data.unlabeled_batch_size if unl is not None else 0}",
            "loader_s": loader_s, "step_s": step_s, "train_s": train_s,
            "peak_mib": peak_memory_mib(dev), "training_mib": peak_memory_mib(dev) - setup_mib,
            "device": str(dev)}


def measure_eval(a) -> dict:
    """Images per second of whole-image and sliding-window inference of the labeled-only model."""
    import torch

    from seg_ssl.config import load_config
    from seg_ssl.engine.trainer import Trainer
    from seg_ssl.evaluation.evaluator import evaluate, predict_kwargs

    config, _ = CONFIGS[a.scale]["labeled-only"]
    ov = [f"work_dir={a.work_dir}", "resume=null", f"train.threads={a.threads}",
          f"data.num_workers={a.workers}", f"data.root={a.data_root}"]
    if a.scale == "voc":
        ov += ["model.encoder_weights=null", f"data.crop_size={a.crop}"]
    ov += a.extra

    def run(trainer, cfg, kw):
        return evaluate(trainer.method.predictor(trainer.model), trainer.val, cfg.data.num_classes,
                        cfg.data.ignore_index, trainer.method.size_divisor(trainer.model), trainer.device,
                        0, 1, cfg.data.val_batch_size, **kw)

    out = {}
    for mode in ("whole", "slide"):
        cfg = load_config(os.path.join(ROOT, config), ov + [f"eval.mode={mode}"])
        trainer = Trainer(cfg)
        trainer.model.eval()
        kw = predict_kwargs(cfg)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        run(trainer, cfg, kw)  # warm-up
        sync()
        t0 = time.time()
        run(trainer, cfg, kw)
        sync()
        out[mode] = len(trainer.val) / (time.time() - t0)
    return {"scale": a.scale, "whole_img_s": out["whole"], "slide_img_s": out["slide"],
            "val_images": len(trainer.val)}


def spawn(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"throughput {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=list(CONFIGS), default="digits")
    p.add_argument("--methods", nargs="+", default=list(CONFIGS["digits"]))
    p.add_argument("--settings", nargs="+", default=["fp32"], choices=list(SETTINGS))
    p.add_argument("--crop", type=int, default=512, help="VOC scale crop")
    p.add_argument("--batch", type=int, default=2, help="VOC scale: labeled (and unlabeled) per process")
    p.add_argument("--selected-num", type=int, default=3200, help="VOC scale CAC negatives per crop")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--data-root", default=None, help="default: data/digits, or a synthetic VOC set")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--extra", nargs="*", default=[], help="config overrides for every run, key=value")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--eval-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.one or a.eval_only:  # child process
        a.method, a.setting = a.one, a.settings[0]
        print(json.dumps(measure_eval(a) if a.eval_only else measure_one(a)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        if a.data_root is None:
            if a.scale == "voc":
                a.data_root = os.path.join(tmp, "voc")
                fake_voc(a.data_root)
            else:
                a.data_root = "data/digits"
        common = ["--scale", a.scale, "--crop", str(a.crop), "--batch", str(a.batch), "--steps", str(a.steps),
                  "--warmup", str(a.warmup), "--threads", str(a.threads), "--workers", str(a.workers),
                  "--data-root", a.data_root, "--selected-num", str(a.selected_num), "--extra", *a.extra]
        rows = []
        for method in a.methods:
            for setting in a.settings:
                rows.append(spawn(common + ["--one", method, "--settings", setting, "--work-dir",
                                            os.path.join(tmp, f"{method}_{setting}")]))
                r = rows[-1]
                print(f"{method:<13} {setting:<21} loader {r['loader_s']:.3f} s/batch, step "
                      f"{r['step_s']:.3f} s, train {r['train_s']:.3f} s/it, peak {r['peak_mib']:.0f} MiB",
                      file=sys.stderr, flush=True)
        ev = None if a.no_eval else spawn(common + ["--eval-only", "--work-dir", os.path.join(tmp, "eval")])

    import torch
    machine = (torch.cuda.get_device_name(0) if torch.cuda.is_available() else
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.threads} threads")
    mem = "peak CUDA allocated" if rows and rows[0]["device"].startswith("cuda") else "peak RSS"
    print(f"\n{a.scale} scale, {machine}, torch {torch.__version__}, {a.workers} loader worker(s)\n")
    fp32_step = {r["method"]: r["step_s"] for r in rows if r["setting"] == "fp32"}
    print(f"| method | setting | crop | batch | train s/it | it/s | step s | step vs fp32 | loader s/batch "
          f"| {mem} MiB | of it, training MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['step_s'] / fp32_step[r['method']]:.2f}x" if r["method"] in fp32_step else ""
        print(f"| {r['method']} | {r['setting']} | {r['crop']} | {r['batch']} | {r['train_s']:.3f} | "
              f"{1 / r['train_s']:.2f} | {r['step_s']:.3f} | {ratio} | {r['loader_s']:.3f} | "
              f"{r['peak_mib']:.0f} | {r['training_mib']:.0f} |")
    if ev:
        print(f"\nevaluation ({ev['val_images']} val images): whole {ev['whole_img_s']:.1f} img/s, "
              f"slide {ev['slide_img_s']:.1f} img/s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "eval": ev, "machine": machine}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
