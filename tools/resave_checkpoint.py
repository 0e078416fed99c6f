#!/usr/bin/env python
"""Re-save a checkpoint you trust as plain data, once, so that seg_ssl can open it safely.

    python tools/resave_checkpoint.py --trust OLD.pth NEW.pth

seg_ssl opens every .pth file with PyTorch's weights-only unpickler (seg_ssl/safe_load.py): a file
holding other objects than tensors, numbers, strings, lists and dicts is refused unopened, since
unpickling it could run any code it names. This tool is the one place in seg_ssl that unpickles a
file fully: only give it a file from a source you trust. NumPy values become numbers and tensors,
argparse Namespaces dicts; the copy is written, read back by the safe loader, and SRC is left as is.
"""
import argparse
import os

from _common import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trust", action="store_true", required=True,
                   help="required: you trust SRC, whose unpickling may run code it names")
    p.add_argument("src", help="the checkpoint to re-save")
    p.add_argument("dst", help="the plain-data copy to write (not SRC)")
    args = p.parse_args(argv)

    import torch

    from seg_ssl.engine.checkpoint import save_atomic
    from seg_ssl.errors import CheckpointError
    from seg_ssl.safe_load import read_pth, to_plain

    if not os.path.isfile(args.src):
        raise CheckpointError(f"checkpoint not found: {args.src}")
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        raise CheckpointError(f"{args.dst}: write the plain copy to another file than {args.src}")
    try:  # the one full unpickle in seg_ssl, asked for with --trust
        obj = torch.load(args.src, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - an unreadable file is a user error here
        raise CheckpointError(f"{args.src} cannot be read as a torch file "
                              f"({type(e).__name__}: {e})") from None
    save_atomic(to_plain(obj, args.src), args.dst)
    read_pth(args.dst, "the plain copy")
    print(f"wrote {args.dst}: plain data, opened without running code; {args.src} is unchanged")
    return 0


if __name__ == "__main__":
    run_cli(main)
