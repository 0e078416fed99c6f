"""The cases of the every-method tests, from the registry and one naming convention, so that a new
method is covered without editing any test: each method NAME of ``seg_ssl.methods.METHODS`` has its
digits benchmark config ``digits_lite0_NAME.yaml`` (the labeled-only baseline: ``digits_lite0_sup.yaml``)
in one of ``CONFIG_DIRS``. A registered method without one fails loudly, naming the file it needs.

The tests run each method's own config on a small test network (``TEST_NET``): what they check is
what a step or a run does, not what it learns."""
import glob
import os

from conftest import ROOT, SMALL_NET, digits_cfg
from seg_ssl.config import load_file
from seg_ssl.methods import METHODS

CONFIG_DIRS = [os.path.join(ROOT, "configs")]  # a plug-in adds the folder of its own configs
TEST_NET = ("model.arch=deeplabv3plus", "model.encoder=resnet18", "model.encoder_weights=null",
            "model.output_stride=16", "train.channels_last=false", *SMALL_NET)


def method_names() -> list[str]:
    return sorted(METHODS)


def all_configs() -> list[str]:
    return sorted(p for d in CONFIG_DIRS for p in glob.glob(os.path.join(d, "*.yaml")))


def configs_of(name: str) -> list[str]:
    """Every config file (in ``CONFIG_DIRS``) that trains ``name``."""
    return [p for p in all_configs() if load_file(p).get("method", "supervised") == name]


def benchmark_config(name: str) -> str:
    stem = "sup" if name == "supervised" else name
    for folder in CONFIG_DIRS:
        path = os.path.join(folder, f"digits_lite0_{stem}.yaml")
        if os.path.isfile(path):
            if load_file(path).get("method") != name:
                raise AssertionError(f"{path} is the benchmark config of method {name!r} but trains "
                                     f"{load_file(path).get('method')!r}")
            return path
    raise AssertionError(f"method {name!r} has no digits benchmark config: add digits_lite0_{stem}.yaml to "
                         f"configs/ (tests/every_method.py)")


def case_cfg(name: str, root: str, work_dir, *extra):
    """The benchmark config of ``name`` on the test network and the test digits set."""
    return digits_cfg(root, str(work_dir), *TEST_NET, *extra, config=benchmark_config(name))
