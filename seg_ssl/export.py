"""Deployment: a weights-only checkpoint, and TorchScript / ONNX files checked against PyTorch.

The exported graph takes ``image``, float32 (B, 3, H, W) RGB in [0, 1] with H and W multiples of
the model's output stride, and returns ``logits`` (B, K, H, W): the config's normalisation is
inside the graph, so a deployment needs no seg_ssl. The ONNX file carries the class names, the
size divisor and the normalisation as metadata, and is checked with onnxruntime against the
PyTorch logits on the same input before the tool reports success.
"""
from __future__ import annotations

import contextlib
import json
import warnings

import numpy as np
import torch
import torch.nn as nn

# what a trainer checkpoint holds besides the weights and config: only a resumed run needs it
TRAINING_STATE = ("optimizer", "scaler", "method", "rng", "skipped")


def weights_only(ckpt: dict, fp16: bool = False) -> dict:
    """The model weights, config, iteration and best score of a trainer checkpoint, without the
    optimizer and the other resume state (Adam's two moments are twice the model's size). ``fp16``
    halves the weights again; seg_ssl.load and the tools cast them back to float32."""
    state = {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}
    if "model" not in state:
        raise ValueError("not a trainer checkpoint: it has no 'model' entry")
    if (ckpt.get("method") or {}).get("ema") is not None:  # the EMA teacher, for eval.model=ema
        state["method"] = {"ema": ckpt["method"]["ema"]}
    if fp16:
        def half(weights):
            return {k: v.half() if torch.is_tensor(v) and v.is_floating_point() else v
                    for k, v in weights.items()}
        state["model"] = half(state["model"])
        if "method" in state:
            state["method"] = {"ema": half(state["method"]["ema"])}
    state["weights_only"] = True
    return state


def is_weights_only(ckpt: dict) -> bool:
    return bool(ckpt.get("weights_only")) or ("model" in ckpt and "optimizer" not in ckpt)


@contextlib.contextmanager
def quiet_tracer():
    """Tracing warns about Python conditions on shapes (the Segmentor's divisibility check): the
    export fixes height and width, so those conditions are constant, and the warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # torch 2.14 marks TorchScript deprecated in favour of torch.export; the file format still
        # loads (torch.jit.load, libtorch), which is what a deployment needs today
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


class Deployable(nn.Module):
    """``image`` in [0, 1] -> logits: the method's predictor after the config's normalisation.
    ``net`` is registered so that tracing finds its weights as parameters, not constants."""

    def __init__(self, net: nn.Module, predict_fn, mean, std):
        super().__init__()
        self.net = net
        self.predict_fn = predict_fn
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.predict_fn((image - self.mean) / self.std)


def deployable(model) -> Deployable:
    """A :class:`Deployable` for a loaded ``seg_ssl.api.SegModel``, in eval mode on the CPU."""
    d = model.cfg.data
    return Deployable(model.model, model.predict_fn, d.mean, d.std).cpu().eval()


def example_input(size: tuple[int, int], divisor: int, seed: int = 0) -> torch.Tensor:
    h, w = (-(-s // divisor) * divisor for s in size)  # rounded up to the output stride
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def export_torchscript(net: Deployable, example: torch.Tensor, out: str) -> None:
    """Traces ``net`` on ``example`` and saves it."""
    with torch.no_grad(), quiet_tracer():
        torch.jit.trace(net, example, check_trace=False).save(out)


def torchscript_max_difference(path: str, net: Deployable, inputs: torch.Tensor) -> float:
    """Largest |logit difference| between the saved TorchScript file and PyTorch on ``inputs``."""
    with torch.no_grad(), quiet_tracer():
        return float((torch.jit.load(path)(inputs) - net(inputs)).abs().max())


def export_onnx(net: Deployable, example: torch.Tensor, out: str, metadata: dict, opset: int = 17) -> None:
    """Writes ``out`` (dynamic batch; height and width fixed to the example's, as the decoder's
    upsampling sizes are traced) with ``metadata`` as the model's metadata properties."""
    import onnx
    with torch.no_grad(), quiet_tracer():
        torch.onnx.export(net, (example,), out, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    proto = onnx.load(out)
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v)
    onnx.checker.check_model(proto)
    onnx.save(proto, out)


def onnx_max_difference(path: str, net: Deployable, inputs: torch.Tensor) -> float:
    """Largest |logit difference| between onnxruntime running ``path`` and PyTorch on ``inputs``."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": inputs.numpy().astype(np.float32)})[0]
    with torch.no_grad():
        ref = net(inputs).numpy()
    if got.shape != ref.shape:
        return float("inf")
    return float(np.abs(got - ref).max())
