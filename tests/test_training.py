import json
import os

import pytest
import torch

from conftest import SMALL_NET, digits_cfg
from reference_ssl import brute_force_miou
from seg_ssl.data.dataset import build_split
from seg_ssl.data.transforms import val_pipeline
from seg_ssl.engine.checkpoint import SaveError, load_checkpoint, save_atomic
from seg_ssl.engine.schedule import poly_lr
from seg_ssl.engine.trainer import Trainer


def test_poly_lr_decays_from_the_base_lr_to_zero_after_a_linear_warm_up():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert abs(poly_lr(0.01, 50, 100) - 0.01 * 0.5 ** 0.9) < 1e-15
    assert poly_lr(0.01, 100, 100) == 0.0
    # warm-up: linear from ratio x lr, multiplied into the poly curve
    assert abs(poly_lr(0.01, 0, 100, warmup_iters=10, warmup_ratio=0.1) - 0.001) < 1e-15
    assert abs(poly_lr(0.01, 5, 100, warmup_iters=10, warmup_ratio=0.1)
               - 0.01 * 0.95 ** 0.9 * 0.55) < 1e-15


def test_a_run_writes_its_files_and_scores_its_final_model_by_brute_force(digits_root, tmp_path):
    cfg = digits_cfg(digits_root, str(tmp_path / "run"), "train.iters=4", *SMALL_NET)
    trainer = Trainer(cfg)
    res = trainer.train()
    # the run's final score is the brute-force count of its final model on the val set
    trainer.model.eval()
    assert res.metrics["mIoU"] == pytest.approx(brute_force_miou(trainer.model, trainer.val, 11,
                                                                 batch_size=8),
                                          abs=1e-12)
    scored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert scored["mIoU"] == pytest.approx(res.metrics["mIoU"])
    assert scored["protocol"] == {"mode": "whole", "scales": [1.0], "flip": False}  # what scored it
    assert res.table.splitlines()[-1] == "protocol: whole (whole image)"
    assert os.path.isfile(tmp_path / "run" / "latest.pth")
    assert os.path.isfile(tmp_path / "run" / "best.pth") and os.path.isfile(tmp_path / "run" / "config.yaml")
    assert (os.path.isfile(tmp_path / "run" / "metrics.json")
            and os.path.isfile(tmp_path / "run" / "train.log"))
    ckpt = load_checkpoint(str(tmp_path / "run" / "latest.pth"))
    assert ckpt["iteration"] == 4 and ckpt["config"]["train"]["iters"] == 4
    assert {"model", "optimizer", "scaler", "rng", "best"} <= set(ckpt)


@pytest.mark.parametrize("amp", ["none", "fp16"])  # fp16: on the CPU too, with its gradient scaler
def test_resume_equals_uninterrupted_run(digits_root, tmp_path, amp):
    common = ("train.iters=8", "train.ckpt_interval=100", "model.dropout=0.3", "train.log_interval=2",
              f"train.amp={amp}", *SMALL_NET)
    full = Trainer(digits_cfg(digits_root, str(tmp_path / "full"), *common))
    full.train()
    part = Trainer(digits_cfg(digits_root, str(tmp_path / "part"), *common))
    part.train(max_steps=3)  # pre-empted after 3 steps: latest.pth at iteration 3
    assert load_checkpoint(str(tmp_path / "part" / "latest.pth"))["iteration"] == 3
    resumed = Trainer(digits_cfg(digits_root, str(tmp_path / "part"), *common))  # resume=auto
    assert resumed.progress.iteration == 3
    resumed.train()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.optimizer.state_dict()["state"][0]["exp_avg"].equal(
        resumed.optimizer.state_dict()["state"][0]["exp_avg"])
    # the scaler's scale and its count of steps since the last overflow continue too
    assert (resumed.scaler.is_enabled() == (amp == "fp16")
            and resumed.scaler.state_dict() == full.scaler.state_dict())
    # the first window after the resume holds only iteration 4, and its log line says so
    logged = [ln.split(" | ")[0] for ln in (tmp_path / "part" / "train.log").read_text().splitlines()
              if " it " in ln]
    assert [ln.split(" it ")[1].split()[0] for ln in logged] == ["2/8", "4/8", "6/8", "8/8"]
    assert [ln.endswith("(mean of 1 it)") for ln in logged] == [False, True, False, False]


def test_evaluating_during_training_does_not_change_the_trained_weights(digits_root, tmp_path):
    """Evaluation every 2 iterations or only at the end: the same weights (dropout draws from the
    global generator, which the val loader would otherwise advance)."""
    common = ("train.iters=4", "train.ckpt_interval=100", "model.dropout=0.3", *SMALL_NET)
    quiet = Trainer(digits_cfg(digits_root, str(tmp_path / "a"), *common, "train.eval_interval=0"))
    quiet.train()
    often = Trainer(digits_cfg(digits_root, str(tmp_path / "b"), *common, "train.eval_interval=1"))
    often.train()
    a, b = quiet.model.state_dict(), often.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_atomic_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "latest.pth")
    save_atomic({"iteration": 1}, path)
    mask = os.umask(0o022)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask  # like any file the user writes, not 0600

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(SaveError, match=f"^cannot write {path}: Permission denied$"):
        save_atomic({"iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert os.listdir(tmp_path) == ["latest.pth"]  # no temp file left behind


def test_a_full_disk_is_one_line_in_train_log_and_keeps_the_last_checkpoint(digits_root, tmp_path,
                                                                            monkeypatch):
    import shutil
    from collections import namedtuple
    trainer = Trainer(digits_cfg(digits_root, str(tmp_path), "train.iters=1"))
    trainer.train()
    need = sum(t.numel() * t.element_size() for t in trainer.model.state_dict().values())

    def zip_writer_failing(obj, f):  # what torch.save raises when the disk fills mid-write
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing "
                           "file data/12: file write failed")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", zip_writer_failing)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30 - 5 * 2**20, 5 * 2**20))
    with pytest.raises(SaveError) as e:
        trainer.save_latest()
    monkeypatch.undo()
    line = str(e.value)
    assert line.startswith(f"cannot write {tmp_path / 'latest.pth'}: the disk is full (5 MB free, the "
                           f"checkpoint needs about ") and "\n" not in line
    assert int(line.split("needs about ")[1].split()[0]) >= need // 2**20  # weights, optimizer state too
    assert line in (tmp_path / "train.log").read_text()
    assert load_checkpoint(str(tmp_path / "latest.pth"))["iteration"] == 1
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_nonfinite_loss_stops_with_a_message_or_is_skipped(digits_root, tmp_path):
    cfg = digits_cfg(digits_root, str(tmp_path / "nan"), "train.iters=4")
    trainer = Trainer(cfg)
    original = trainer.method.training_step

    def nan_at_2(model, labeled, unlabeled, iteration):
        out = original(model, labeled, unlabeled, iteration)
        if iteration == 2:
            out["sup"] = out["sup"] * float("nan")
            out["loss"] = out["sup"]
        return out

    trainer.method.training_step = nan_at_2
    with pytest.raises(FloatingPointError, match="non-finite loss at iteration 2 in term\\(s\\) loss, sup; "
                                                 "no checkpoint was written yet"):
        trainer.train()
    trainer = Trainer(cfg)  # a run that saved at iteration 2 names that checkpoint
    trainer.method.training_step = nan_at_2
    trainer.train(max_steps=2)
    with pytest.raises(FloatingPointError, match=f"the last good checkpoint is {tmp_path}/nan/latest.pth"):
        trainer.train()
    cfg = digits_cfg(digits_root, str(tmp_path / "skip"), "train.iters=4", "train.skip_nonfinite=true")
    trainer = Trainer(cfg)
    trainer.method.training_step = nan_at_2
    trainer.train()
    assert trainer.progress.iteration == 4 and trainer.progress.skipped == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.slow
def test_sigterm_saves_latest_and_the_same_command_continues(digits_root, tmp_path):
    import signal
    import subprocess
    import sys

    from conftest import ROOT
    work = tmp_path / "pre"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"),
           os.path.join(ROOT, "configs", "digits_sup.yaml"), f"data.root={digits_root}", f"work_dir={work}",
           "data.labeled_list=splits/1_4/labeled.txt", "data.num_workers=0", "data.val_batch_size=8",
           "train.iters=100000", "train.log_interval=2", "train.eval_interval=0", "train.ckpt_interval=1000",
           "data.batch_size=2"]
    # the signal goes out only once the run has logged iteration 4, so its handler is installed: the
    # log is read line by line as it is written (unbuffered), with no clock involved
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if " it 4/" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    out = "".join(seen) + out
    assert proc.returncode == 0, out
    stopped_at = load_checkpoint(str(work / "latest.pth"))["iteration"]
    assert 4 <= stopped_at < 100000 and "stopped (signal 15)" in out
    again = subprocess.run(cmd[:-4] + ["train.iters=" + str(stopped_at + 2), "train.eval_interval=0",
                                       "train.ckpt_interval=1000", "data.batch_size=2"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resumed from {work}/latest.pth at iteration {stopped_at}" in again.stdout
    assert load_checkpoint(str(work / "latest.pth"))["iteration"] == stopped_at + 2


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_optimizer_groups_backbone_lr_and_weight_decay(digits_root, tmp_path, decay_norm_and_bias):
    from seg_ssl.engine.optim import build_optimizer
    from seg_ssl.methods.cps import CPS
    cfg = digits_cfg(digits_root, str(tmp_path), "method=cps", "train.optimizer=sgd", "train.lr=0.02",
                     "train.backbone_lr_mult=0.1", "train.weight_decay=0.0005",
                     f"train.decay_norm_and_bias={str(decay_norm_and_bias).lower()}")
    model = CPS(cfg).build_model()
    opt = build_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for g in opt.param_groups:
        for p in g["params"]:
            seen[names[id(p)]] = (g["lr"], g["weight_decay"])
    assert set(seen) == set(names.values())  # every parameter once, both branches included
    # what the CPS release exempts: every bias, and BatchNorm's weights
    exempt = {f"{m}.{n}" for m, mod in model.named_modules() for n, _ in mod.named_parameters(recurse=False)
              if n == "bias" or isinstance(mod, torch.nn.BatchNorm2d)}
    assert "branch1.encoder.bn1.weight" in exempt and "branch1.classifier.1.bias" in exempt
    for name, (lr, wd) in seen.items():
        in_encoder = name.split(".")[1] == "encoder"  # branchN.encoder.*
        assert lr == pytest.approx(0.002 if in_encoder else 0.02), name
        assert wd == (0.0 if name in exempt and not decay_norm_and_bias else 0.0005), name
    assert (seen["branch1.encoder.conv1.weight"][1] == 0.0005
            and seen["branch2.classifier.1.weight"][1] == 0.0005)
    if not decay_norm_and_bias:
        assert seen["branch1.encoder.bn1.weight"] == (pytest.approx(0.002), 0.0)
        assert seen["branch2.classifier.1.bias"] == (pytest.approx(0.02), 0.0)


def test_adamw_is_fused_and_steps_as_the_per_tensor_loop(digits_root, tmp_path):
    """AdamW runs fused (one kernel for every tensor) and its steps are those of the per-tensor loop
    (torch's default on the CPU) with the same parameter groups, moments included."""
    import copy

    from seg_ssl.engine.optim import build_optimizer
    from seg_ssl.methods.supervised import Supervised
    cfg = digits_cfg(digits_root, str(tmp_path), "train.optimizer=adamw", "train.lr=0.01",
                     "train.backbone_lr_mult=0.1", "train.weight_decay=0.01")
    model = Supervised(cfg).build_model()
    twin = copy.deepcopy(model)
    fused = build_optimizer(cfg, model)
    twin_of = {id(p): q for p, q in zip(model.parameters(), twin.parameters(), strict=True)}
    settings = ("lr", "weight_decay", "betas", "eps")
    loop = torch.optim.AdamW([{**{k: g[k] for k in settings}, "params": [twin_of[id(p)] for p in g["params"]]}
                              for g in fused.param_groups], foreach=False)
    assert all(g["fused"] for g in fused.param_groups) and not any(g["fused"] for g in loop.param_groups)
    start = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # the same gradients to both, so that only the optimizers can differ
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
            twin_of[id(p)].grad = p.grad.clone()
        fused.step()
        loop.step()
    for (name, p), q, p0 in zip(model.named_parameters(), twin.parameters(), start, strict=True):
        assert torch.allclose(p, q, rtol=0.0, atol=1e-7), name
        assert not torch.equal(p, p0), name


def test_every_method_starts_from_the_baselines_weights(digits_root, tmp_path):
    """At one seed, the baseline and every method (CPS: its first branch) begin from the same weights,
    so a comparison measures the method and not the draw (CAC's projector and CPS's second branch are
    extra)."""
    from seg_ssl.methods import METHODS
    def first_network(method, *extra):
        model = Trainer(digits_cfg(digits_root, str(tmp_path / method), f"method={method}", "seed=3",
                                   *extra)).model
        return (model.branch1 if method == "cps" else model).state_dict()

    base = first_network("supervised")
    for method in sorted(set(METHODS) - {"supervised"}):
        other = first_network(method)
        assert set(base) <= set(other)
        for k in base:
            assert torch.equal(base[k], other[k]), (method, k)
    other_seed = Trainer(digits_cfg(digits_root, str(tmp_path / "s4"), "seed=4")).model.state_dict()
    assert not torch.equal(base["classifier.1.weight"], other_seed["classifier.1.weight"])


@pytest.mark.slow
def test_ctrl_c_to_the_whole_process_group_stops_cleanly_with_loader_workers(digits_root, tmp_path):
    """Ctrl-C in a terminal signals every process of the group, the DataLoader workers included:
    they leave it to the main process, which saves latest.pth and exits cleanly."""
    import signal
    import subprocess
    import sys

    from conftest import ROOT
    work = tmp_path / "grp"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "train.py"),
                             os.path.join(ROOT, "configs", "digits_sup.yaml"), f"data.root={digits_root}",
                             f"work_dir={work}", "data.labeled_list=splits/1_4/labeled.txt",
                             "data.num_workers=1", "data.val_batch_size=8", "train.iters=100000",
                             "train.log_interval=2", "train.eval_interval=0", "train.ckpt_interval=1000",
                             "data.batch_size=2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seen = []
    for line in proc.stdout:  # a loader worker is running once iterations are logged
        seen.append(line)
        if " it 4/" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    out = "".join(seen) + proc.communicate(timeout=600)[0]
    assert proc.returncode == 0 and "stopped (signal 2)" in out, out[-2000:]
    assert 4 <= load_checkpoint(str(work / "latest.pth"))["iteration"] < 100000


def test_every_evaluation_is_a_line_of_metrics_jsonl(digits_root, tmp_path):
    """metrics.json holds the last evaluation; metrics.jsonl one line per evaluation, with per-class
    IoU by class name and the confusion matrix, and a resumed run appends to it."""
    def run(iters):
        cfg = digits_cfg(digits_root, str(tmp_path / "run"), f"train.iters={iters}", "train.eval_interval=2",
                         "model.decoder_channels=16")
        Trainer(cfg).train()
        return cfg
    run(2)
    cfg = run(4)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [2, 4]
    last = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert lines[-1]["mIoU"] == last["mIoU"] and list(lines[-1]["IoU"]) == cfg.data.class_names
    assert list(lines[-1]["IoU"].values()) == last["IoU"]
    val = build_split(cfg.data, "val", val_pipeline(cfg.data))
    labeled_pixels = sum(int((val[i]["label"] != 255).sum()) for i in range(len(val)))
    cm = torch.tensor(lines[-1]["confusion"])
    assert cm.shape == (11, 11) and int(cm.sum()) == labeled_pixels
    assert lines[-1]["aAcc"] == pytest.approx(float(cm.diag().sum() / cm.sum()))


def test_after_step_runs_once_per_update_with_the_steps_iteration(digits_root, tmp_path):
    """The method's after_step hook (an EMA teacher's place) sees the weights the optimizer has just
    updated, once per step, with the iteration the step trained."""
    trainer = Trainer(digits_cfg(digits_root, str(tmp_path), "train.iters=3", *SMALL_NET))
    weight = next(trainer.model.parameters())
    seen = []
    step = trainer.method.training_step

    def training_step(model, labeled, unlabeled, iteration):
        seen.append(("step", iteration, weight.detach().clone()))
        return step(model, labeled, unlabeled, iteration)

    trainer.method.training_step = training_step
    trainer.method.after_step = lambda model, iteration: seen.append(("after", iteration,
                                                                      weight.detach().clone()))
    trainer.train()
    trainer.close()
    assert [(kind, it) for kind, it, _ in seen] == [(k, i) for i in range(3) for k in ("step", "after")]
    for (_, _, before), (_, _, after) in zip(seen[::2], seen[1::2], strict=True):
        assert not torch.equal(before, after)  # the update came first


def test_the_warm_up_draws_no_unlabeled_batch_and_the_stream_goes_on_as_if_it_had(digits_root, tmp_path):
    """Before unsup_start_iter the method gets unlabeled=None (no augmentation of images nobody
    reads); from it on, the batch of iteration k is the one a stream drawn from iteration 0 gives."""
    from seg_ssl.data.streams import make_stream
    trainer = Trainer(digits_cfg(digits_root, str(tmp_path), "train.iters=4", "unimatch.unsup_start_iter=2",
                                 "unimatch.rampup_iters=0", *SMALL_NET, config="digits_unimatch.yaml"))
    seen = []
    step = trainer.method.training_step

    def training_step(model, labeled, unlabeled, iteration):
        seen.append((iteration, None if unlabeled is None else unlabeled["image"].clone()))
        return step(model, labeled, unlabeled, iteration)

    trainer.method.training_step = training_step
    trainer.train()
    trainer.close()
    d = trainer.cfg.data
    every = make_stream(trainer.unlabeled, 2 * d.unlabeled_batch_size, 0, 1, trainer.cfg.seed, 1, 0, 0)
    expected = [next(every)["image"] for _ in range(4)]
    assert [it for it, _ in seen] == [0, 1, 2, 3] and seen[0][1] is None and seen[1][1] is None
    for it in (2, 3):
        assert torch.equal(seen[it][1], expected[it].contiguous(memory_format=torch.channels_last)
                           if trainer.cfg.train.channels_last else expected[it])


def test_the_log_shows_the_method_section_in_use_and_config_yaml_every_section(digits_root, tmp_path):
    Trainer(digits_cfg(digits_root, str(tmp_path), "train.iters=1", *SMALL_NET)).close()
    log, record = (tmp_path / "train.log").read_text(), (tmp_path / "config.yaml").read_text()
    assert "\ncps:" in record and "\nunimatch_v2:" in record  # every section is on record
    assert "config (resolved" in log and "\ncps:" not in log and "\nunimatch:" not in log
