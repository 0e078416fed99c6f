"""Helpers shared by the tests: recording a trainer's steps, running a tool, writing a tiny
VOC-layout dataset. Toy networks and brute-force references live in ``reference_ssl.py``."""
import os
import subprocess
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record_steps(trainer) -> list:
    """A list that receives each step's outputs (floats where scalar), through ``trainer.on_step``."""
    logs = []
    trainer.on_step.append(lambda iteration, out: logs.append(
        {k: float(v) if torch.is_tensor(v) and v.numel() == 1 else v for k, v in out.items()}))
    return logs


def run_tool(*args, cwd=ROOT, env=None, popen=False):
    """``python ARGS`` (a tool script and its arguments) with the hub offline; a CompletedProcess,
    or with ``popen`` the running Popen (text pipes on stdin and stdout)."""
    cmd, env = [sys.executable, *args], dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=env)
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


def make_voc(root, ids, size=(40, 30), num_classes=4, seed=0):
    """A tiny VOC-layout fixture: JPEGImages/*.jpg, SegmentationClassAug/*.png, lists."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "JPEGImages"), exist_ok=True)
    os.makedirs(os.path.join(root, "SegmentationClassAug"), exist_ok=True)
    for i in ids:
        img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        lab = rng.integers(0, num_classes, (size[1], size[0])).astype(np.uint8)
        lab[:2] = 255
        Image.fromarray(img).save(os.path.join(root, "JPEGImages", i + ".jpg"))
        Image.fromarray(lab, mode="L").save(os.path.join(root, "SegmentationClassAug", i + ".png"))
    return root


def write_list(root, name, lines):
    with open(os.path.join(root, name), "w") as f:
        f.write("\n".join(lines) + "\n")
