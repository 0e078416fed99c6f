"""What holds for every registered method: the cases come from the registry and the config naming
convention (``every_method.py``), so a new method is covered here, and by the speed-option tests,
without editing a test."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from every_method import benchmark_config, case_cfg, configs_of, method_names
from helpers import load_tool
from seg_ssl.config import load_config
from seg_ssl.engine.checkpoint import load_checkpoint
from seg_ssl.engine.smoke import run_smoke, smoke_overrides
from seg_ssl.engine.trainer import Trainer
from seg_ssl.methods import METHODS


@pytest.mark.parametrize("name", method_names())
def test_every_method_has_its_benchmark_config(name):
    assert os.path.isfile(benchmark_config(name))  # fails naming the file a method needs


def test_a_method_without_a_benchmark_config_fails_loudly(monkeypatch):
    import every_method
    monkeypatch.setattr(every_method, "CONFIG_DIRS", [os.path.join(ROOT, "docs")])
    with pytest.raises(AssertionError, match="method 'cac' has no digits benchmark config: add "
                                             "digits_lite0_cac.yaml to configs/"):
        benchmark_config("cac")


def state_equal(a, b) -> bool:
    """Nested plain data (tensors, numbers, lists, dicts) equal, tensors bit for bit."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(state_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("name", method_names())
def test_resume_is_exact(name, digits_root, tmp_path):
    """5 iterations straight, or 3, a stop and 2 more from latest.pth: the same weights and the same
    method state (box generators, class distributions, banks, teachers) bit for bit."""
    common = ("train.iters=5", "train.ckpt_interval=100", "data.batch_size=4", "data.unlabeled_batch_size=4",
              "train.log_interval=1", *METHODS[name].smoke_overrides(2))  # every term from iteration 3
    full = Trainer(case_cfg(name, digits_root, tmp_path / "full", *common))
    full.train()
    part = Trainer(case_cfg(name, digits_root, tmp_path / "part", *common))
    part.train(max_steps=3)
    part.close()
    assert load_checkpoint(str(tmp_path / "part" / "latest.pth"))["iteration"] == 3
    resumed = Trainer(case_cfg(name, digits_root, tmp_path / "part", *common))
    assert resumed.progress.iteration == 3
    resumed.train()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert state_equal(full.method.state_dict(), resumed.method.state_dict())
    full.close()
    resumed.close()


# UniMatch V2's network at a test's size: a DINOv2-S shaped ViT of 2 blocks with random weights
DINOV2_NET = ("model.arch=dpt_unimatch_v2", "model.encoder=dinov2_small", "model.vit_blocks=2",
              "model.encoder_weights=null", "model.dropout=0.0")


@pytest.mark.parametrize("name", method_names())
def test_every_config_of_the_method_passes_dry_run(name, capsys):
    """Every shipped config that trains the method resolves, on its own network and on UniMatch V2's,
    and its per-process sizes follow from the global batches and the method's draws (CutMix methods
    draw the unlabeled batch twice)."""
    paths = configs_of(name)
    assert benchmark_config(name) in paths
    for path, network in [(p, n) for p in paths for n in ((), DINOV2_NET)]:
        assert load_tool("train").main([path, "--dry-run", "--json", *network]) in (0, None), (path, network)
        out = json.loads(capsys.readouterr().out)
        cfg, sizes = out["config"], out["sizes"]
        assert cfg["method"] == name
        assert sizes["labeled_per_process"] == cfg["data"]["batch_size"]
        assert sizes["unlabeled_per_process"] == cfg["data"]["unlabeled_batch_size"]
        draws = METHODS[name].unlabeled_draws(load_config(path))
        if draws > 1:
            assert sizes["unlabeled_drawn_per_process"] == draws * sizes["unlabeled_per_process"], path


@pytest.mark.parametrize("name", method_names())
def test_a_smoke_run_reaches_every_loss_term(name, digits_root, tmp_path):
    cfg = case_cfg(name, digits_root, tmp_path, *smoke_overrides(name))
    summary = run_smoke(cfg)
    assert summary.startswith(f"smoke run of {name}: 4 iterations;"), summary
    if METHODS[name].uses_unlabeled:  # iterations 3-4 run the unsupervised terms too
        assert "iterations 1-2 logged" in summary and "from iteration 3 also" in summary, summary
    zero = summary.split("zero at every step: ")[1].split(")")[0].split(", ") if "zero at" in summary else []
    assert set(zero) <= {"pseudo_bg"}, summary  # a fresh model's pseudo labels may hold no background


@pytest.mark.parametrize("name", method_names())
def test_a_smoke_run_on_a_tiny_dinov2_network_reaches_every_loss_term(name, digits_root, tmp_path):
    cfg = case_cfg(name, digits_root, tmp_path, *smoke_overrides(name), *DINOV2_NET, "data.crop_size=56")
    summary = run_smoke(cfg)
    assert summary.startswith(f"smoke run of {name}: 4 iterations;"), summary
    if METHODS[name].uses_unlabeled:
        assert "from iteration 3 also" in summary, summary


# -- a method added at run time ---------------------------------------------------------------------

PLUGIN = """
import every_method
from seg_ssl.config import register_method
from seg_ssl.methods.fixmatch import FixMatch


class FixMatchCopy(FixMatch):
    name = "fixmatch_copy"


register_method(FixMatchCopy)
every_method.CONFIG_DIRS.append({configs!r})
"""
SUITES = ("test_resume_is_exact", "test_every_config_of_the_method_passes_dry_run",
          "test_a_smoke_run_reaches_every_loss_term",
          "test_bf16_autocast_on_the_cpu_keeps_losses_and_confidences_in_float32")


@pytest.mark.slow
def test_a_method_registered_at_run_time_is_covered_without_editing_a_test(tmp_path):
    """A copy of FixMatch under another name, registered by a pytest plug-in with its benchmark
    config in another folder, is picked up by the resume, dry-run, smoke and bf16 suites."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "digits_lite0_fixmatch_copy.yaml").write_text(
        f"_base_: [{os.path.join(ROOT, 'configs', 'digits_lite0_fixmatch.yaml')}]\nmethod: fixmatch_copy\n"
        "fixmatch_copy: {fg_marginal: true, conf_thresh: 0.0}\n")
    (tmp_path / "fixmatch_copy_plugin.py").write_text(PLUGIN.format(configs=str(configs)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.path.join(ROOT, "tests"), ROOT]),
               HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "fixmatch_copy_plugin", "-p",
                        "no:cacheprovider", "-v", "-k", "fixmatch_copy and not channels_last",
                        "tests/test_every_method.py", "tests/test_speed_options.py"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    for suite in SUITES:
        assert f"{suite}[fixmatch_copy] PASSED" in r.stdout, (suite, r.stdout[-3000:])
