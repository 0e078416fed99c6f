"""Everyday use after `make demo` (issue 26): threads, console, API, export, metrics, TensorBoard."""
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, THREADS, digits_cfg
from helpers import load_tool, run_tool


# -- threads ---------------------------------------------------------------------------------------

def test_explicit_thread_settings_win_over_a_config_files_value():
    from seg_ssl.engine.threads import resolve_threads
    assert resolve_threads(2, False, {"OMP_NUM_THREADS": "1"}) == (
        1, "OMP_NUM_THREADS=1 in the environment, which wins over train.threads: 2 of the config file")
    assert resolve_threads(3, True, {"OMP_NUM_THREADS": "1"}) == (
        3, "train.threads=3 on the command line; OMP_NUM_THREADS=1 is ignored")
    assert resolve_threads(2, False, {}) == (2, "train.threads: 2 in the config file")
    assert resolve_threads(0, False, {})[0] == 0  # torch's default
    assert resolve_threads(0, False, {"OMP_NUM_THREADS": "x"})[0] == 0  # not a count: ignored


def test_the_trainer_uses_omp_num_threads_over_the_config_file_and_logs_why(digits_root, tmp_path, monkeypatch):
    from seg_ssl.config import load_config
    from seg_ssl.engine.trainer import Trainer
    cfg_file = tmp_path / "threads.yaml"
    cfg_file.write_text(f"_base_: {os.path.join(ROOT, 'configs', 'digits_sup.yaml')}\ntrain:\n  threads: 2\n")
    base = [f"data.root={digits_root}", "data.labeled_list=splits/1_4/labeled.txt", "data.num_workers=0",
            "data.unlabeled_list=splits/1_4/unlabeled.txt", "train.iters=1"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    try:
        for extra, expect, why in (([], 1, "OMP_NUM_THREADS=1 in the environment, which wins over train.threads: 2"),
                                   (["train.threads=3"], 3, "train.threads=3 on the command line")):
            work = tmp_path / f"w{expect}"
            cfg = load_config(str(cfg_file), [*base, f"work_dir={work}", *extra])
            trainer = Trainer(cfg)
            trainer.close()
            assert torch.get_num_threads() == expect
            assert f"threads: {expect} ({why}" in (work / "train.log").read_text()
    finally:
        torch.set_num_threads(before)


def test_no_shipped_digits_config_sets_a_thread_count():
    from seg_ssl.config import load_config
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if name.startswith("digits"):
            cfg = load_config(os.path.join(ROOT, "configs", name), ["data.root=x"])
            assert cfg.train.threads == 0, name


# -- console ---------------------------------------------------------------------------------------

class Terminal:
    """stdout and stderr of one terminal: everything written, in order."""
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_progress_bar_and_log_lines_never_share_a_line(digits_root, tmp_path, monkeypatch):
    import sys
    from seg_ssl.engine.trainer import Trainer
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    trainer = Trainer(digits_cfg(digits_root, str(tmp_path / "w"), "train.iters=2", "train.log_interval=1"))
    try:
        trainer.train()
    finally:
        trainer.close()
    # the bar is drawn at once (0%) and redrawn with "\r", without a newline; a log line written
    # after it without the redirect continues that line: "...?it/s]08:47:18 it 1/2 lr ..."
    assert "%|" in term.text
    lines = [part.split("\r")[-1] for part in term.text.split("\n")]
    logged = [line for line in lines if " it 1/2 lr " in line or " it 2/2 lr " in line]
    assert len(logged) == 2 and all(line[:8].count(":") == 2 and line[8:12] == " it " for line in logged), logged
    assert all("eta" in line for line in logged)  # the ETA stays in the log lines


# -- stale text ------------------------------------------------------------------------------------

def test_package_summaries_name_every_method():
    import configparser
    import seg_ssl
    from seg_ssl.methods import METHODS
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    shown = {"supervised": "labeled-only", "cac": "CAC", "cps": "CPS", "unimatch": "UniMatch"}
    assert set(shown) == set(METHODS)  # a new method gets a name here, and in both summaries
    for summary in (setup["metadata"]["description"], seg_ssl.__doc__.splitlines()[0]):
        assert all(name in summary for name in shown.values()), summary


# -- digits and flips ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(ROOT, "configs")) if n.startswith("digits")))
def test_digits_are_never_flipped_in_training_or_testing(name):
    """A mirrored digit is another shape (2 and 5): no pipeline a digits config builds flips, and
    evaluation does not either."""
    import albumentations as A
    from seg_ssl.config import load_config
    from seg_ssl.data.transforms import train_pipeline
    from seg_ssl.methods import METHODS
    cfg = load_config(os.path.join(ROOT, "configs", name), ["data.root=x", "model.encoder_weights=null"])
    assert not cfg.eval.flip and not cfg.data.hflip and (cfg.method != "cac" or not cfg.cac.hflip)
    pipelines = [train_pipeline(cfg.data, labeled=True), train_pipeline(cfg.data, labeled=False)]
    method = METHODS[cfg.method].__new__(METHODS[cfg.method])  # its pipeline only: no model built
    if hasattr(method, "unlabeled_pipeline"):
        method.c = cfg[cfg.method]
        pipelines.append(method.unlabeled_pipeline(cfg.data))
    ops = []
    for p in pipelines:
        assert not getattr(p, "hflip", False)  # CAC's crop pairs flip by their own flag
        for compose in (getattr(p, "compose", None), getattr(p, "geometric", None)):
            if compose is not None:
                ops += list(compose.transforms)
    assert ops and not any(isinstance(op, A.HorizontalFlip) for op in ops)


def test_eval_flip_says_when_not_to_use_it_and_warns_where_training_never_flipped(caplog):
    from seg_ssl.config import SCHEMA, load_config
    assert "not for digits" in SCHEMA["eval"]["flip"].doc
    with caplog.at_level("WARNING", logger="seg_ssl"):
        load_config(os.path.join(ROOT, "configs", "digits_lite0_sup.yaml"), ["data.root=x", "eval.flip=true"])
    assert "eval.flip is true but data.hflip is false" in caplog.text
