"""Shared CLI plumbing: user mistakes become one-line errors, not tracebacks."""
from __future__ import annotations

import os
import sys

# tools/ are run as scripts from a checkout: make its package importable without installing (inside an
# installed wheel the tools sit in seg_ssl/tools and the package is importable already)
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_CHECKOUT, "seg_ssl")):
    sys.path.insert(0, _CHECKOUT)

from seg_ssl.errors import ConfigError, UserError, one_line  # noqa: E402,F401 (ConfigError: for the tools)

USER_ERRORS = (UserError, FileNotFoundError, FloatingPointError)


def run_cli(main) -> None:
    try:
        code = main()
    except USER_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def image_files(path: str, data_cfg, option: str = "--input") -> list[str]:
    """An image, a folder of images, or a split list (.txt of ids resolved through the config)."""
    if path.endswith(".txt") and os.path.isfile(path):
        from seg_ssl.data.dataset import read_split
        d = data_cfg
        return [s.image for s in read_split(path, d.root, d.img_dir, d.ann_dir, d.img_suffix, d.ann_suffix,
                                            need_labels=False)]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXT))
        if not files:
            raise ConfigError(f"{option} {path}: no images ({', '.join(IMAGE_EXT)})")
        return files
    if os.path.isfile(path):
        return [path]
    raise ConfigError(f"{option} {path}: no such file or directory")


def add_model_args(p) -> None:
    """The positionals of every tool that loads a trained model: ``[CONFIG] CHECKPOINT [k=v ...]``."""
    p.add_argument("config", nargs="?", help="a config file, or the checkpoint (its stored config)")
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("overrides", nargs="*", help="dotted key=value for the config")


def model_config(args):
    """``(cfg, checkpoint_path)`` from :func:`add_model_args`'s positionals: the config file's, or
    the resolved config stored in the checkpoint, with the overrides applied."""
    from seg_ssl.api import resolve_config, split_positionals
    config, checkpoint, overrides = split_positionals(args.config, args.checkpoint, args.overrides)
    return resolve_config(config, checkpoint, overrides), checkpoint
