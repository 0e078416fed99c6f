"""Opening a checkpoint never runs code from it: every entry point reads .pth files with the
weights-only unpickler (seg_ssl/safe_load.py) and refuses anything else in one line."""
import argparse
import ast
import io
import os
import pickle
import types

import numpy as np
import pytest
import torch

import seg_ssl
from conftest import ROOT, SMALL_NET, digits_cfg
from helpers import cli
from seg_ssl.engine.checkpoint import load_checkpoint
from seg_ssl.engine.rng import rng_state, seed_everything, set_rng_state
from seg_ssl.engine.sweep import holds_weights_only
from seg_ssl.errors import CheckpointError, ConfigError
from seg_ssl.methods import build_method
from seg_ssl.safe_load import NUMPY_SCALARS, read_pth, to_plain, unsafe_globals

CONFIG = os.path.join(ROOT, "configs", "digits_sup.yaml")


class Planted:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def planted(digits_root, tmp_path_factory):
    """A trainer-format checkpoint (weights of the config's model, its config) and release-format
    ones, each carrying a :class:`Planted` object; and the file that must never appear."""
    folder = tmp_path_factory.mktemp("planted")
    marker = folder / "RAN"
    cfg = digits_cfg(digits_root, str(folder / "w"), *SMALL_NET)
    model = build_method(cfg).build_model()
    config = cfg.to_dict()
    config["notes"] = Planted(marker)  # where a stored config is read: before any weight
    paths = {"seg_ssl": folder / "seg_ssl.pth"}
    torch.save({"model": model.state_dict(), "config": config, "iteration": 1, "extra": Planted(marker)},
               paths["seg_ssl"])
    releases = (("unimatch", "model"), ("cps", "model"), ("cac", "state_dict"), ("unimatch_v2", "model_ema"))
    for release, key in releases:
        paths[release] = folder / f"{release}.pth"
        torch.save({key: {"w": torch.zeros(1)}, "epoch": 1, "best": Planted(marker)}, paths[release])
    return types.SimpleNamespace(marker=marker, cfg=cfg, **{k: str(v) for k, v in paths.items()})


def test_the_planted_file_runs_code_when_unpickled_fully(planted):
    """The plant is live: the checks below would fail if an entry point unpickled it."""
    torch.load(planted.seg_ssl, weights_only=False)
    assert planted.marker.exists()
    planted.marker.unlink()


def refused(result, path) -> bool:
    lines = result.stderr.strip().splitlines()
    return (result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
            and f"{path} holds objects that are not plain data" in lines[0] and "posix.system" in lines[0]
            and "nothing in it was run" in lines[0] and "Traceback" not in result.stderr)


def entry_points(p, tmp_path, image):
    """name -> (the planted file, the tool and its arguments)."""
    ckpt = p.seg_ssl
    small = [f"data.root={p.cfg.data.root}", "data.num_workers=0", *SMALL_NET]
    train = [*small, "data.labeled_list=splits/1_4/labeled.txt", "train.iters=1"]
    return {
        "eval (stored config)": (ckpt, "eval", ckpt),
        "eval CONFIG": (ckpt, "eval", CONFIG, ckpt, *small),
        "infer": (ckpt, "infer", CONFIG, ckpt, *small, "--input", image, "--out", tmp_path / "pred"),
        "export --weights-only": (ckpt, "export", ckpt, "--weights-only", "--out", tmp_path / "w.pth"),
        "export --format torchscript": (ckpt, "export", CONFIG, ckpt, *small, "--format", "torchscript",
                                        "--out", tmp_path / "m.pt"),
        "gradcam": (ckpt, "gradcam", CONFIG, ckpt, *small, "--image", image, "--class", "1", "--out",
                    tmp_path / "g"),
        "tsne": (ckpt, "tsne", CONFIG, ckpt, *small, "--images", "1", "--out", tmp_path / "t.png"),
        "train load_from=": (ckpt, "train", CONFIG, f"load_from={ckpt}", f"work_dir={tmp_path / 'a'}",
                             *train),
        "train resume=": (ckpt, "train", CONFIG, f"resume={ckpt}", f"work_dir={tmp_path / 'b'}", *train),
        **{f"convert --from {r}": (getattr(p, r), "convert_checkpoint", "--from", r, getattr(p, r),
                                   tmp_path / "c.pth")
           for r in ("unimatch", "cps", "cac", "unimatch_v2")},
    }


def test_every_entry_point_refuses_a_planted_checkpoint_in_one_line(planted, tmp_path):
    image = os.path.join(planted.cfg.data.root, "JPEGImages", "val_00000.jpg")
    for name, (path, tool, *args) in entry_points(planted, tmp_path, image).items():
        result = cli(tool, *args)
        assert refused(result, path), (name, result.returncode, result.stderr)
        assert not planted.marker.exists(), name
    written = {f.name for f in tmp_path.iterdir()}
    assert written <= {"a", "b"}, written  # a refused tool wrote no output (the trainer: its log)
    with pytest.raises(CheckpointError, match="not plain data .*posix.system"):
        seg_ssl.load(planted.seg_ssl)
    cell = tmp_path / "cell"
    cell.mkdir()
    os.link(planted.seg_ssl, cell / "latest.pth")
    with pytest.raises(CheckpointError, match="not plain data"):  # the sweep's look at a finished cell
        holds_weights_only(str(cell))
    assert not planted.marker.exists()


def test_only_the_trusting_resave_tool_unpickles_fully():
    """No module of seg_ssl, tool or benchmark loads with weights_only=False or pickle; one tool does,
    behind --trust."""
    found = []
    for folder in ("seg_ssl", "tools", "benchmarks", "datasets"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in (f for f in files if f.endswith(".py")):
                path = os.path.join(base, f)
                tree = ast.parse(open(path).read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.keyword) and node.arg == "weights_only" and not (
                            isinstance(node.value, ast.Constant) and node.value.value is True):
                        found.append(os.path.relpath(path, ROOT))
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                            a.name in ("pickle", "dill", "joblib") for a in node.names) or (
                            isinstance(node, ast.ImportFrom) and node.module in ("pickle", "dill", "joblib")):
                        found.append(os.path.relpath(path, ROOT))
    assert found == ["tools/resave_checkpoint.py"]


def test_a_checkpoint_holds_plain_data_and_resumes_every_rng(digits_root, tmp_path):
    """What the trainer writes (weights, optimizer, scaler, method state, RNGs, counters, config)
    loads with plain torch.load(weights_only=True), and its RNG state continues every generator."""
    from seg_ssl.engine.trainer import Trainer
    work = tmp_path / "w"
    Trainer(digits_cfg(digits_root, str(work), *SMALL_NET, "train.iters=2", config="digits_cps.yaml")).train()
    assert unsafe_globals(str(work / "latest.pth")) == []
    ckpt = torch.load(work / "latest.pth", weights_only=True)
    assert {"model", "optimizer", "scaler", "method", "rng", "config"} <= set(ckpt)
    assert set(ckpt["method"]) >= {"label_dist", "pred_dist", "mask_rng"}
    seed_everything(5)
    np.random.randn()  # NumPy caches a second gauss: the saved state carries it
    saved = to_plain(rng_state())
    draws = (np.random.rand(3), np.random.randn(), torch.rand(2), __import__("random").random())
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    again = (np.random.rand(3), np.random.randn(), torch.rand(2), __import__("random").random())
    assert np.array_equal(draws[0], again[0]) and draws[1] == again[1]
    assert torch.equal(draws[2], again[2]) and draws[3] == again[3]


def test_an_older_checkpoint_with_numpy_rng_state_still_loads_and_resumes(digits_root, tmp_path):
    """Checkpoints written before the plain RNG form hold np.random.get_state()'s array: loaded
    with NumPy arrays allowed by name, and a resume continues from them."""
    from seg_ssl.engine.trainer import Trainer
    work = tmp_path / "w"
    Trainer(digits_cfg(digits_root, str(work), *SMALL_NET, "train.iters=1")).train()
    ckpt = load_checkpoint(str(work / "latest.pth"))
    seed_everything(11)
    ckpt["rng"]["numpy"] = np.random.get_state()  # the tuple form, with an ndarray
    expected = np.random.rand(4)
    torch.save(ckpt, work / "latest.pth")
    assert "numpy.ndarray" in unsafe_globals(str(work / "latest.pth"))
    set_rng_state(load_checkpoint(str(work / "latest.pth"))["rng"])
    assert np.array_equal(np.random.rand(4), expected)
    trainer = Trainer(digits_cfg(digits_root, str(work), *SMALL_NET, "train.iters=2"))
    assert trainer.progress.iteration == 1


class _NumPy1Pickler(pickle._Pickler):
    """Names NumPy's scalar constructor as NumPy 1 did (``numpy.core``), as the releases' files do."""

    def save_global(self, obj, name=None):
        if obj is np._core.multiarray.scalar:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def test_release_files_may_hold_numpy_scalars_and_nothing_more(tmp_path):
    numpy1 = types.SimpleNamespace(Pickler=_NumPy1Pickler, __name__="pickle")
    state = {"backbone.w": torch.ones(2)}
    path = tmp_path / "best.pth"
    torch.save({"model": state, "epoch": 3, "previous_best": np.float64(71.25)}, path, pickle_module=numpy1)
    assert unsafe_globals(str(path)) == ["numpy.core.multiarray.scalar", "numpy.dtype"]
    with pytest.raises(CheckpointError,
                       match=r"not plain data \(numpy.core.multiarray.scalar, numpy.dtype\)"):
        read_pth(str(path))  # plain data only, as for seg_ssl's own files and ImageNet weights
    loaded = read_pth(str(path), allow=NUMPY_SCALARS)
    assert loaded["previous_best"] == 71.25 and torch.equal(loaded["model"]["backbone.w"],
                                                            state["backbone.w"])
    torch.save({"model": state, "previous_best": np.array([1.0, 2.0])}, path)  # an array is not a scalar
    with pytest.raises(CheckpointError, match="numpy._core.multiarray._reconstruct, numpy.ndarray"):
        read_pth(str(path), "unimatch checkpoint", allow=NUMPY_SCALARS)
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError,
                       match=r"unimatch checkpoint .*best.pth holds objects that are not plain "
                             r"data \(argparse.Namespace\)"):
        read_pth(str(path), "unimatch checkpoint", allow=NUMPY_SCALARS)


def test_imagenet_weights_are_read_as_plain_data(tmp_path):
    from seg_ssl.models.segmentor import Segmentor
    path = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(1), "meta": Planted(tmp_path / "RAN")}, path)
    with pytest.raises(ConfigError,
                       match=r"model.encoder_weights .*resnet18.pth holds objects that are not plain "
                             r"data \(posix.system\)"):
        Segmentor("deeplabv3plus", "resnet18", num_classes=3, encoder_weights=str(path))
    path = tmp_path / "dinov2_vits14_pretrain.pth"  # the official DINOv2 layout, with a plant
    torch.save({"cls_token": torch.zeros(1, 1, 384), "meta": Planted(tmp_path / "RAN")}, path)
    with pytest.raises(ConfigError,
                       match=r"model.encoder_weights .*vits14_pretrain.pth holds objects that are "
                             r"not plain data \(posix.system\)"):
        Segmentor("dpt_unimatch_v2", "dinov2_small", num_classes=3, encoder_weights=str(path), dropout=0.0)
    assert not (tmp_path / "RAN").exists()


def test_a_trusted_file_is_resaved_as_plain_data(tmp_path):
    src, dst = tmp_path / "old.pth", tmp_path / "new.pth"
    numpy_rng = np.random.get_state()
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.5, crop=[321, 321]),
                "best": np.float32(0.75), "rng": numpy_rng}, src)
    result = cli("resave_checkpoint", src, dst)  # no --trust: nothing is opened
    assert result.returncode == 2 and "--trust" in result.stderr and not dst.exists()
    result = cli("resave_checkpoint", "--trust", src, dst)
    assert result.returncode == 0, result.stderr
    plain = torch.load(dst, weights_only=True)
    assert plain["args"] == {"lr": 0.5, "crop": [321, 321]} and plain["best"] == 0.75
    assert plain["rng"][0] == "MT19937" and plain["rng"][2:] == numpy_rng[2:]
    assert plain["rng"][1].dtype == torch.int64 and plain["rng"][1].tolist() == numpy_rng[1].tolist()
    torch.save({"model": torch.nn.Linear(2, 2)}, src)  # a whole module has no plain form
    result = cli("resave_checkpoint", "--trust", src, tmp_path / "x.pth")
    assert result.returncode == 2 and "['model'] is a torch.nn.modules.linear.Linear" in result.stderr
    assert not (tmp_path / "x.pth").exists()
