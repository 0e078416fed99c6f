"""``seg-ssl COMMAND [args]``: one console entry point for the tools in ``tools/``.

    seg-ssl train configs/digits_lite0_cac.yaml train.iters=30
    seg-ssl eval runs/demo_cac/latest.pth
    seg-ssl infer runs/demo_cac/latest.pth --input IMG --out out/
    seg-ssl export runs/demo_cac/latest.pth --format onnx --out model.onnx

Each command runs ``tools/<command>.py`` of the checkout the package is installed from (``pip
install -e .``, as ``make`` does): the tools stay plain scripts that also run as
``python tools/eval.py ...``, and there is one copy of each.
"""
from __future__ import annotations

import os
import runpy
import sys

COMMANDS = {
    "train": "train", "eval": "eval", "infer": "infer", "export": "export", "gradcam": "gradcam",
    "tsne": "tsne", "sweep": "sweep", "compare": "compare", "check-dataset": "check_dataset",
    "make-splits": "make_splits", "convert-checkpoint": "convert_checkpoint",
    "resave-checkpoint": "resave_checkpoint",
}


def tools_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def usage() -> str:
    return "usage: seg-ssl {" + ",".join(COMMANDS) + "} [args ...]  (seg-ssl COMMAND --help for each)"


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; {usage()}", file=sys.stderr)
        sys.exit(2)
    script = os.path.join(tools_dir(), COMMANDS[command] + ".py")
    if not os.path.isfile(script):
        print(f"error: {script} not found: seg-ssl runs the tools of a source checkout; install it with "
              f"pip install -e . from the repository", file=sys.stderr)
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
