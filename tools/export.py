#!/usr/bin/env python
"""Export a trained model: TorchScript or ONNX (checked against PyTorch), or a weights-only checkpoint.

    python tools/export.py [CONFIG] CHECKPOINT --format {torchscript,onnx} --out F [--size H W]
                           [key=value ...]
    python tools/export.py [CONFIG] CHECKPOINT --weights-only --out F [--fp16]

Without CONFIG the config stored in the checkpoint is used. The exported graph takes `image`,
float32 (B, 3, H, W) RGB in [0, 1] (the config's normalisation is inside), and returns `logits`
(B, K, H, W); H and W are fixed to --size (default: data.crop_size, rounded up to the output
stride), the batch is free. The written file is run again (onnxruntime for ONNX, torch.jit.load for
TorchScript) on a batch of 2 random images and compared with PyTorch's logits; a difference above
--atol is an error. ONNX needs `pip install -e '.[export]'` (onnx, onnxruntime).

--weights-only writes the model weights and the resolved config (no optimizer, AMP scaler, RNG or
method state: what seg_ssl.load, eval, infer and gradcam need, not what resuming needs); --fp16
stores the weights in half precision (loaded back as float32).
"""
import argparse
import os

from _common import add_model_args, model_config, run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--format", choices=["torchscript", "onnx"])
    p.add_argument("--weights-only", action="store_true")
    p.add_argument("--fp16", action="store_true", help="with --weights-only: half-precision weights")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--atol", type=float, default=1e-3, help="largest |logit difference| accepted")
    p.add_argument("--opset", type=int, default=17)
    args = p.parse_intermixed_args(argv)
    if args.weights_only == bool(args.format):
        p.error("give --format torchscript|onnx, or --weights-only")
    if args.fp16 and not args.weights_only:
        p.error("--fp16 goes with --weights-only")

    from seg_ssl import export
    from seg_ssl.config import ConfigError
    from seg_ssl.engine.checkpoint import load_checkpoint, save_atomic

    cfg, checkpoint = model_config(args)
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    if args.weights_only:
        try:
            ckpt = load_checkpoint(checkpoint)
            small = export.weights_only(ckpt, fp16=args.fp16)
        except ValueError as e:
            raise ConfigError(f"{checkpoint}: {e}") from None
        small["config"] = cfg.to_dict()
        save_atomic(small, args.out)
        before, after = os.path.getsize(checkpoint), os.path.getsize(args.out)
        print(f"wrote {args.out}: {after / 2**20:.1f} MB (weights{' fp16' if args.fp16 else ''} and config; "
              f"{checkpoint} is {before / 2**20:.1f} MB)")
        return 0

    if args.format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("--format onnx needs onnx and onnxruntime: "
                              "pip install -e '.[export]'") from None
    from seg_ssl.api import SegModel
    model = SegModel(cfg, checkpoint, device="cpu")
    net = export.deployable(model)
    size = tuple(args.size) if args.size else (cfg.data.crop_size, cfg.data.crop_size)
    example = export.example_input(size, model.size_divisor)
    check = export.example_input(size, model.size_divisor, seed=1).expand(2, -1, -1, -1).clone()
    check[1] = export.example_input(size, model.size_divisor, seed=2)[0]
    if args.format == "torchscript":
        export.export_torchscript(net, example, args.out)
        diff = export.torchscript_max_difference(args.out, net, check)
        runner = "torch.jit.load"
    else:
        export.export_onnx(net, example, args.out, {
            "class_names": model.class_names, "size_divisor": model.size_divisor,
            "input": "image: float32 (B, 3, H, W) RGB in [0, 1], normalised inside",
            "mean": list(cfg.data.mean), "std": list(cfg.data.std), "method": cfg.method})
        diff = export.onnx_max_difference(args.out, net, check)
        runner = "onnxruntime"
    h, w = example.shape[-2:]
    if not diff <= args.atol:
        raise ConfigError(f"{args.out}: {runner}'s logits differ from PyTorch's by {diff:.3g} (> --atol "
                          f"{args.atol:g})")
    print(f"wrote {args.out} ({args.format}, input 1x3x{h}x{w} batch free, "
          f"{os.path.getsize(args.out) / 2**20:.1f} MB); {runner} vs PyTorch on 2 images: max |logit "
          f"difference| {diff:.2e} (<= {args.atol:g})")
    return 0


if __name__ == "__main__":
    run_cli(main)
