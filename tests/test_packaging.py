"""seg_ssl as a package: a wheel carries the tools and the shipped configs, and its ``seg-ssl``
command trains and evaluates from any folder."""
import configparser
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from setuptools import find_packages

from conftest import ROOT
from seg_ssl.shipped import config_names, resolve_config_path, shipped_dir


def test_the_wheel_lists_every_subpackage_and_maps_tools_and_configs_into_it():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    listed = setup["options"]["packages"].split()
    mapped_in = ["seg_ssl.tools", "seg_ssl.configs"]
    assert sorted(listed) == sorted(find_packages(ROOT, include=["seg_ssl*"]) + mapped_in)
    mapped = dict(line.split(" = ") for line in setup["options"]["package_dir"].strip().splitlines())
    assert mapped == {"seg_ssl.tools": "tools", "seg_ssl.configs": "configs"}


def test_a_shipped_config_is_named_without_a_path(tmp_path, monkeypatch):
    assert shipped_dir("configs") == os.path.join(ROOT, "configs")  # a checkout: its own folder
    assert "digits_lite0_cac" in config_names() and not any(n.startswith("_") for n in config_names())
    monkeypatch.chdir(tmp_path)  # outside the checkout
    shipped = os.path.join(ROOT, "configs", "digits_lite0_cac.yaml")
    for name in ("digits_lite0_cac", "digits_lite0_cac.yaml", "configs/digits_lite0_cac.yaml"):
        assert resolve_config_path(name) == shipped
    assert resolve_config_path("elsewhere/digits_lite0_cac.yaml") == "elsewhere/digits_lite0_cac.yaml"
    (tmp_path / "digits_lite0_cac.yaml").write_text("method: cac\n")  # a file of that name wins
    assert resolve_config_path("digits_lite0_cac.yaml") == "digits_lite0_cac.yaml"


@pytest.mark.slow
def test_an_installed_wheel_trains_and_evaluates_from_any_folder(digits_root, tmp_path):
    """The README's install (``pip install .``: the repository built into a wheel, the wheel
    installed; here with this environment's build backend, offline) into a fresh environment that
    reuses this one's dependencies (torch and the rest, through a .pth file: not this checkout's
    editable seg_ssl), then, from a folder outside the repository: the shipped configs listed, a
    smoke training of a shipped config named without a path, and an evaluation of its checkpoint."""
    source = tmp_path / "source"  # a copy: a build writes build/ and *.egg-info beside its sources
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    for name in ("seg_ssl", "tools", "configs"):
        shutil.copytree(os.path.join(ROOT, name), source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(wheels), str(source)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = wheels.glob("seg_ssl-*.whl")
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "seg_ssl_test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")  # added to sys.path; its own .pth files are not run
    r = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    outside = tmp_path / "somewhere"
    outside.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")

    def seg_ssl(*args):
        return subprocess.run([str(env_dir / "bin" / "seg-ssl"), *map(str, args)], cwd=outside, env=env,
                              capture_output=True, text=True)

    where = subprocess.run([python, "-c", "import seg_ssl; print(seg_ssl.__file__)"],
                           cwd=outside, env=env, capture_output=True, text=True).stdout
    assert where.startswith(site), where  # the wheel's package, not the checkout's
    listed = seg_ssl("configs")
    assert listed.returncode == 0 and "digits_lite0_cac" in listed.stdout
    assert "voc_unimatch_v2" in listed.stdout
    train = seg_ssl("train", "digits_lite0_sup", "--smoke", f"data.root={digits_root}",
                    "model.encoder_weights=null", "data.labeled_list=splits/1_4/labeled.txt",
                    "data.num_workers=0", "data.crop_size=32", "model.encoder_depth=3",
                    "model.decoder_channels=16", "train.threads=1")
    assert train.returncode == 0, train.stderr[-3000:]
    assert "smoke run of supervised: 4 iterations" in train.stdout
    ckpt = outside / "runs" / "smoke" / "digits_lite0_sup" / "latest.pth"
    evaluated = seg_ssl("eval", ckpt, "data.val_batch_size=8")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "mIoU" in evaluated.stdout
