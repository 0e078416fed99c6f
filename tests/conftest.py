import os
import sys

import pytest
import torch

from helpers import ROOT

sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `make test` runs the suite in pytest-xdist workers (one per core): each worker's torch gets an
# equal share of the cores, since more threads than cores makes OpenMP's threads wait on each other.
# The tests compare runs within one process, so no result depends on the thread count.
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
torch.set_num_threads(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))  # the same share for the tools the tests start


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """A small digits set (96 train, 24 val) shared by the training tests."""
    from seg_ssl.data.digits import build_digits
    root = str(tmp_path_factory.mktemp("digits"))
    build_digits(root, num_train=96, num_val=24, seed=0, splits=("1/4",))
    return root


# A small net for tests that check what a step or a run does, not what it learns: 32x32 crops through
# a ResNet-18 stem and two stages with a 16-channel head run every op of every method at ~1/6 of the
# digits network's cost (bf16 and fp16, emulated on this CPU: ~1/6 of ~10x)
SMALL_NET = ("data.crop_size=32", "model.encoder_depth=3", "model.decoder_channels=16")


def digits_cfg(root, work_dir, *overrides, config="digits_sup.yaml"):
    from seg_ssl.config import load_config
    return load_config(os.path.join(ROOT, "configs", config), [
        f"data.root={root}", f"work_dir={work_dir}", "data.labeled_list=splits/1_4/labeled.txt",
        "data.unlabeled_list=splits/1_4/unlabeled.txt", "data.num_workers=0", "data.val_batch_size=8",
        "train.log_interval=1000", "train.eval_interval=0", f"train.threads={THREADS}", *overrides])


def pytest_collection_modifyitems(config, items):
    """The slow tests (each starts processes: ~10-70 s) first: spread over the xdist workers from
    the start instead of one worker finishing them alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise
