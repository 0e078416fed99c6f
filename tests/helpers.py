"""Helpers shared by the tests: recording a trainer's steps, running a tool, scoring by brute force."""
import os
import subprocess
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record_steps(trainer) -> list:
    """Wrap ``trainer.step``; the returned list receives each step's outputs (floats where scalar)."""
    logs = []
    original = trainer.step

    def record(labeled, unlabeled):
        out = original(labeled, unlabeled)
        logs.append({k: float(v) if torch.is_tensor(v) and v.numel() == 1 else v for k, v in out.items()})
        return out

    trainer.step = record
    return logs


def run_tool(*args, cwd=ROOT, env=None, popen=False):
    """``python ARGS`` (a tool script and its arguments) with the hub offline; a CompletedProcess,
    or with ``popen`` the running Popen (text pipes on stdin and stdout)."""
    cmd, env = [sys.executable, *args], dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


def load_tool(name: str):
    """tools/NAME.py as a module, to call its ``main(argv)`` in this process: a tool started as a
    process spends ~5 s importing torch and smp before it does anything."""
    import importlib.util
    tools = os.path.join(ROOT, "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)  # the tools import their shared _common
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(tools, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli(name: str, *args, env=None):
    """``python tools/NAME.py ARGS`` in this process, through the tools' own ``run_cli`` (user
    errors become one line on stderr and exit 2): a CompletedProcess-like ``(returncode, stdout,
    stderr)``. An unexpected exception propagates as it would print a traceback. ``env`` sets
    environment variables for the call only."""
    import contextlib
    import io
    import types
    module = load_tool(name)
    from _common import run_cli
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_cli(lambda: module.main([str(a) for a in args]))  # always ends in sys.exit
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def brute_force_miou(predict, dataset, num_classes: int, ignore_index: int = 255, batch_size: int = 1) -> float:
    """mIoU counted class by class over every pixel of ``dataset`` (the definition, no confusion
    matrix): IoU_c = |pred = c and gt = c| / |pred = c or gt = c| over non-ignored pixels, summed over
    the whole set; classes absent from both are left out of the mean. Images are predicted in
    batches of ``batch_size`` in order, as the evaluator batches them, so the logits are the same."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            preds = predict(torch.stack([it["image"] for it in items])).argmax(1).numpy()
            for pred, item in zip(preds, items):
                gt = np.asarray(item["label"])
                keep = gt != ignore_index
                for c in range(num_classes):
                    p, g = (pred == c) & keep, gt == c
                    inter[c] += (p & g).sum()
                    union[c] += (p | g).sum()
    present = union > 0
    return float((inter[present] / union[present]).mean())
