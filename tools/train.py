#!/usr/bin/env python
"""Train a method from a config.

    python tools/train.py configs/digits_sup.yaml [key=value ...] [--dry-run | --smoke]
    torchrun --nproc_per_node=4 tools/train.py configs/voc_cps.yaml data.root=/data/VOC2012

Work dir (default runs/<config name>): config.yaml, train.log, tb/, latest.pth, best.pth,
metrics.json. Re-running the same command resumes from latest.pth (resume=auto).

--smoke: 4 iterations into runs/smoke/<config name> (unless work_dir= is given), each one logged,
with the method's unsupervised term from iteration 3 at full weight, so that every loss term runs;
ends with a line naming the terms each phase logged (an error if the unsupervised term never ran).
"""
import argparse
import json
import sys

from _common import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.iters=1000")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and derived sizes")
    p.add_argument("--json", action="store_true",
                   help="with --dry-run: one JSON object {config, sizes} on stdout")
    p.add_argument("--smoke", action="store_true",
                   help="a few iterations through every loss term of the method")
    args = p.parse_intermixed_args(argv)

    from seg_ssl.config import load_config
    cfg = load_config(args.config, args.overrides)
    if args.smoke:
        import os

        from seg_ssl.engine.smoke import run_smoke, smoke_overrides
        name = os.path.splitext(os.path.basename(args.config))[0]
        # the command line's overrides come last: they win over the smoke settings
        cfg = load_config(args.config, [*smoke_overrides(cfg.method),
                                        f"work_dir={os.path.join('runs', 'smoke', name)}", *args.overrides])
        print(run_smoke(cfg))
        return 0
    if args.dry_run:
        import os

        import yaml

        from seg_ssl.engine.dry_run import derived_sizes, missing_data
        sizes = derived_sizes(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        if args.json:  # for scripts: nothing else on stdout
            print(json.dumps({"config": cfg.to_dict(), "sizes": sizes}))
        else:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            print(json.dumps(sizes, indent=1))
        for note in missing_data(cfg):  # on stderr: stdout stays YAML + JSON
            print(f"note: {note}", file=sys.stderr)
        return 0
    from seg_ssl.engine.trainer import train
    res = train(cfg)
    if res.stopped or not res.is_main:
        return 0
    print(res.table)  # once, by rank 0
    return 0


if __name__ == "__main__":
    run_cli(main)
