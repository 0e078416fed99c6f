"""train.amp on the CPU, train.channels_last and train.compile (seg_ssl/engine/execution.py): each
method's first full step under each option, against the float32 eager step on the same batch from
the same weights."""
import math
import sys

import pytest
import torch

import seg_ssl.methods.cac as cac_module
from conftest import SMALL_NET, digits_cfg
from every_method import case_cfg, method_names
from seg_ssl.engine.smoke import smoke_overrides
from seg_ssl.engine.trainer import Trainer
from seg_ssl.methods import METHODS

# every registered method on its benchmark config (tests/every_method.py), and plain CPS beside
# CPS+CutMix: name -> (method, extra overrides)
METHOD_RUNS = {**{name: (name, []) for name in method_names()}, "cps_plain": ("cps", ["cps.cutmix=false"])}
# |loss(bf16) - loss(fp32)| <= BF16_RTOL * |loss(fp32)|: measured on this machine kind, the six
# methods' first-step losses differ by 2.8e-5 to 4.5e-4 relative (bf16 rounds activations to 8 bits
# of mantissa, the losses themselves are float32); 5e-3 leaves 10x for other CPUs' kernels, and a
# loss computed in bf16 (rounding the loss itself costs up to 4e-3) would not pass it reliably
BF16_RTOL = 5e-3


def cfg_for(root, work_dir, name, *options):
    method, extra = METHOD_RUNS[name]
    # the first step runs every term (smoke overrides: no warm-up, thresholds a fresh model passes)
    # no dropout: in NHWC memory a dropout mask is drawn in another order (another, equally random
    # mask), so channels_last could not be compared with the reference step
    return case_cfg(method, root, work_dir, *extra, *smoke_overrides(method, iters=2, start=0),
                    "data.batch_size=4", "data.unlabeled_batch_size=4", "model.dropout=0.0",
                    "model.aspp_dropout=0.0", *options)


def first_step(cfg, record=None):
    """The losses and gradients of the first training step of ``cfg``."""
    trainer = Trainer(cfg)
    try:
        labeled, unlabeled, _ = trainer.next_batches(*trainer.batch_streams())
        losses = trainer.step(labeled, unlabeled)
        assert (trainer.train_model is trainer.ddp) == (cfg.train.compile == "none")  # no fallback to eager
        grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
                 if p.grad is not None}
        bank = getattr(trainer.method, "bank", None)
        if record is not None and bank:
            record["bank"] = {t.dtype for entry in bank for t in entry[:1]}
        return losses, grads
    finally:
        trainer.close()


def pseudo_labelling_modules() -> list:
    """The method modules (and their base) that make pseudo labels with ``pseudo_labels``."""
    import seg_ssl.methods.base as base
    modules = {sys.modules[m.__module__] for m in METHODS.values()} | {base}
    return sorted((m for m in modules if hasattr(m, "pseudo_labels")), key=lambda m: m.__name__)


def recording_dtypes(monkeypatch, record: dict):
    """Record the dtype of every pseudo-label confidence and of CAC's features, negatives and
    confidences as the methods hand them to the pure functions."""
    import seg_ssl.losses.pseudo_labels as pl
    original = pl.pseudo_labels

    def pseudo_labels(*args, **kwargs):
        label, conf = original(*args, **{**kwargs, "return_conf": True})
        record.setdefault("confidence", set()).add(conf.dtype)
        return (label, conf) if kwargs.get("return_conf") else label

    for module in pseudo_labelling_modules():
        monkeypatch.setattr(module, "pseudo_labels", pseudo_labels)
    contrast = cac_module.directional_contrastive_loss

    def directional_contrastive_loss(feat1, feat2, conf1, conf2, label1, label2, neg_feat, *rest):
        record.setdefault("contrastive", set()).update(t.dtype for t in
                                                       (feat1, feat2, conf1, conf2, neg_feat))
        return contrast(feat1, feat2, conf1, conf2, label1, label2, neg_feat, *rest)

    monkeypatch.setattr(cac_module, "directional_contrastive_loss", directional_contrastive_loss)


_REFERENCE = {}  # name -> the float32 eager first step (both tests of a method in one worker share it)


def reference_step(root, tmp_path, name):
    if name not in _REFERENCE:
        _REFERENCE[name] = first_step(cfg_for(root, tmp_path / "fp32", name))
    return _REFERENCE[name]


@pytest.mark.parametrize("name", list(METHOD_RUNS))
def test_bf16_autocast_on_the_cpu_keeps_losses_and_confidences_in_float32(digits_root, tmp_path, monkeypatch,
                                                                           name):
    reference, _ = reference_step(digits_root, tmp_path, name)
    record = {}
    recording_dtypes(monkeypatch, record)
    losses, grads = first_step(cfg_for(digits_root, tmp_path / "bf16", name, "train.amp=bf16"), record)
    assert "skipped" not in losses
    for key, value in losses.items():
        if torch.is_tensor(value):  # every loss term is reported in float32, and finite
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), (key, value)
    assert all(torch.isfinite(g).all() for g in grads.values()) and grads
    assert set(losses) == set(reference)  # the same terms ran (none skipped by a warm-up)
    for key in ("loss", "sup"):
        if key in reference:
            ref, got = float(reference[key]), float(losses[key])
            assert math.isfinite(got) and abs(got - ref) <= BF16_RTOL * abs(ref), (key, ref, got)
    module = sys.modules[METHODS[METHOD_RUNS[name][0]].__module__]
    if hasattr(module, "pseudo_labels"):  # a method that makes pseudo labels keeps their confidences float32
        assert record.get("confidence") == {torch.float32}, record
    if name == "cac":
        assert record.get("contrastive") == {torch.float32}, record
        assert record["bank"] == {torch.float32}  # the bank of negatives keeps float32 features


# torch.compile's "eager" backend: dynamo traces the step into graphs (the DDP wrapper included) and
# runs them without code generation, which takes minutes per graph on this CPU; inductor's speed is
# measured in benchmarks/speed_options.py
COMPILED = ("train.compile=default", "train.compile_backend=eager")


@pytest.mark.parametrize("name", list(METHOD_RUNS))
def test_channels_last_and_compile_give_the_eager_step(digits_root, tmp_path, name):
    reference, ref_grads = reference_step(digits_root, tmp_path, name)
    losses, grads = first_step(cfg_for(digits_root, tmp_path / "fast", name, "train.channels_last=true",
                                       *COMPILED))
    assert set(losses) == set(reference)
    for key in ("loss", "sup"):
        if key in reference:  # NHWC convolutions sum in another order: float32 rounding only
            assert float(losses[key]) == pytest.approx(float(reference[key]), rel=1e-5), key
    assert grads.keys() == ref_grads.keys()
    # all gradients together (a conv bias before BatchNorm has a gradient of zero up to rounding).
    # Measured on the small net: 1.5e-6 to 2.3e-6 apart. (At the digits network's 128 channels
    # they are 4e-4 to 5.7e-3 apart, almost all of it in the float32 NCHW reference: on this CPU
    # torch's NCHW convolution weight gradient is then 1.5% from a float64 one, the NHWC one 1.3e-5.)
    diff = torch.cat([(grads[k] - ref_grads[k]).flatten() for k in grads]).norm()
    ref = torch.cat([g.flatten() for g in ref_grads.values()]).norm()
    assert diff <= 1e-3 * ref, float(diff / ref)


def test_a_compiled_runs_checkpoint_resumes_without_compile_and_the_reverse(digits_root, tmp_path):
    def run(work, first: tuple, then: tuple):
        common = ("train.iters=4", "train.ckpt_interval=2", "model.dropout=0.3", *SMALL_NET)
        trainer = Trainer(digits_cfg(digits_root, str(work), *common, *first))
        trainer.train(max_steps=2)
        trainer.close()
        trainer = Trainer(digits_cfg(digits_root, str(work), *common, *then))
        trainer.train()
        trainer.close()
        return trainer.model.state_dict()

    eager = run(tmp_path / "eager", (), ())
    for first, then in ((COMPILED, ()), ((), COMPILED)):
        state = run(tmp_path / f"from_{bool(first)}", first, then)
        assert state.keys() == eager.keys()  # the plain module's keys: no _orig_mod. prefix
        for k, v in state.items():
            assert torch.equal(v, eager[k]), k  # the eager backend runs the same kernels


def test_a_backend_that_cannot_compile_is_one_warning_and_training_goes_on_eager(digits_root, tmp_path,
                                                                                 caplog):
    import torch._dynamo

    @torch._dynamo.register_backend(name="seg_ssl_test_broken")
    def broken(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler")

    trainer = Trainer(digits_cfg(digits_root, str(tmp_path), "train.iters=2", *SMALL_NET,
                                 "train.compile=default", "train.compile_backend=seg_ssl_test_broken"))
    try:
        trainer.train()
        assert trainer.progress.iteration == 2 and trainer.train_model is trainer.ddp
    finally:
        trainer.close()
    log = (tmp_path / "train.log").read_text()
    assert log.count("train.compile=default (backend seg_ssl_test_broken) failed at iteration 1") == 1
    assert "no C++ compiler" in log and "training eager from here" in log


def test_a_channels_last_runs_checkpoint_predicts_as_the_trained_model(digits_root, tmp_path):
    """The pretrained digits configs train in NHWC by default; the tools (seg_ssl.load, eval, export)
    build an NCHW model from the checkpoint. Its probabilities are the NHWC model's."""
    import numpy as np

    import seg_ssl
    from seg_ssl.data.transforms import normalize
    from seg_ssl.evaluation.evaluator import predict_kwargs
    from seg_ssl.evaluation.inference import predict_probs
    trainer = Trainer(digits_cfg(digits_root, str(tmp_path), "train.iters=2", *SMALL_NET,
                                 "train.channels_last=true"))
    try:
        trainer.train()
        image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        x = normalize(image, trainer.cfg.data.mean, trainer.cfg.data.std)[None]
        model = trainer.model.eval()
        assert next(p for p in model.parameters()
                    if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            trained = predict_probs(trainer.method.predictor(model), x,
                                    size_divisor=trainer.method.size_divisor(model),
                                    **predict_kwargs(trainer.cfg))[0].numpy()
    finally:
        trainer.close()
    loaded = seg_ssl.load(str(tmp_path / "latest.pth"), device="cpu").predict_proba(image)
    assert loaded.shape == trained.shape == (11, 64, 64)
    np.testing.assert_allclose(loaded, trained, atol=1e-5)  # NHWC and NCHW sum in another order only
