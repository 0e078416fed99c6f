"""``seg-ssl COMMAND [args]``: one console entry point for the tools in ``tools/``.

    seg-ssl train digits_lite0_cac train.iters=30     # a shipped config by name, or a path
    seg-ssl eval runs/digits_lite0_cac/latest.pth
    seg-ssl infer runs/digits_lite0_cac/latest.pth --input IMG --out out/
    seg-ssl export runs/digits_lite0_cac/latest.pth --format onnx --out model.onnx
    seg-ssl configs                                   # the shipped configs, one line each

Each command runs the tool script ``tools/<command>.py``: the checkout's in an editable install,
the copy inside the package in an installed wheel (``seg_ssl.shipped``), so the tools stay plain
scripts that also run as ``python tools/eval.py ...``, and there is one copy of each.
"""
from __future__ import annotations

import os
import runpy
import sys

from seg_ssl.shipped import config_names, shipped_dir

COMMANDS = {
    "train": "train", "eval": "eval", "infer": "infer", "export": "export", "gradcam": "gradcam",
    "tsne": "tsne", "sweep": "sweep", "compare": "compare", "check-dataset": "check_dataset",
    "make-splits": "make_splits", "convert-checkpoint": "convert_checkpoint",
    "resave-checkpoint": "resave_checkpoint", "demo": "demo",
}


def tools_dir() -> str:
    return shipped_dir("tools")


def usage() -> str:
    commands = ",".join([*COMMANDS, "configs"])
    return f"usage: seg-ssl {{{commands}}} [args ...]  (seg-ssl COMMAND --help for each)"


def list_configs() -> str:
    """Each shipped config's name and the first line of its leading comment."""
    lines = []
    for name in config_names():
        with open(os.path.join(shipped_dir("configs"), name + ".yaml")) as f:
            first = next((line[1:].strip() for line in f if line.startswith("#")), "")
        lines.append(f"{name:<30} {first}")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "configs":
        print(list_configs())
        return
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; {usage()}", file=sys.stderr)
        sys.exit(2)
    script = os.path.join(tools_dir(), COMMANDS[command] + ".py")
    if not os.path.isfile(script):
        print(f"error: {script} not found: this seg_ssl installation carries no tools (reinstall it: "
              f"pip install . from the repository)", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, tools_dir())  # the tools import their shared _common
    old_argv = sys.argv
    sys.argv = [f"seg-ssl {command}", *rest]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv = old_argv


if __name__ == "__main__":
    main()
