"""Everyday use after `make demo`: threads, console, API, export, metrics, TensorBoard."""
import functools
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


def test_the_trainer_uses_omp_num_threads_over_the_config_file_and_logs_why(digits_root, tmp_path,
                                                                            monkeypatch):
    from seg_ssl.config import load_config
    from seg_ssl.engine.trainer import Trainer
    cfg_file = tmp_path / "threads.yaml"
    cfg_file.write_text(f"_base_: {os.path.join(ROOT, 'configs', 'digits_sup.yaml')}\ntrain:\n  threads: 2\n")
    base = [f"data.root={digits_root}", "data.labeled_list=splits/1_4/labeled.txt", "data.num_workers=0",
            "data.unlabeled_list=splits/1_4/unlabeled.txt", "train.iters=1"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    try:
        for extra, expect, why in (([], 1, "OMP_NUM_THREADS=1 in the environment, which wins over "
                                            "train.threads: 2"),
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
    assert len(logged) == 2 and all(line[:8].count(":") == 2 and line[8:12] == " it "
                                    for line in logged), logged
    assert all("eta" in line for line in logged)  # the ETA stays in the log lines


# -- digits and flips ------------------------------------------------------------------------------

@pytest.mark.parametrize("name",
                         sorted(n for n in os.listdir(os.path.join(ROOT, "configs"))
                                if n.startswith("digits")))
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
    method = METHODS[cfg.method](cfg)
    if method.uses_unlabeled:
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


# -- the small API and checkpoint-only tools ---------------------------------------------------------

@pytest.fixture
def sup_checkpoint(digits_root, tmp_path):
    """What the trainer writes (weights and the resolved config), from a seeded random model."""
    from seg_ssl.methods import build_method
    cfg = digits_cfg(digits_root, str(tmp_path / "w"), "data.num_workers=0")
    torch.manual_seed(0)
    model = build_method(cfg).build_model()
    path = tmp_path / "m.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "optimizer": {}}, path)
    return str(path), cfg


def test_load_reads_the_config_in_the_checkpoint_and_predicts_any_image_form(sup_checkpoint, digits_root):
    from PIL import Image

    import seg_ssl
    from seg_ssl.data.transforms import normalize
    from seg_ssl.engine.loading import load_for_eval
    from seg_ssl.evaluation.inference import predict_probs
    path, cfg = sup_checkpoint
    model = seg_ssl.load(path)  # no config given
    assert model.cfg.to_dict() == cfg.to_dict() and model.class_names[7] == "digit_6"
    image_path = os.path.join(digits_root, "JPEGImages", "val_00000.jpg")
    image = np.asarray(Image.open(image_path).convert("RGB"))  # read-only, as PIL gives it
    probs = model.predict_proba(image)
    assert probs.shape == (11, 64, 64) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    mask = model.predict(image_path)
    assert mask.shape == (64, 64) and np.array_equal(mask, probs.argmax(0))
    assert np.array_equal(model.predict(Image.open(image_path)), mask)
    assert np.array_equal(model.predict(image.astype(np.float32) / 255), mask)
    # the same numbers as the config-file path the tools take
    loaded = load_for_eval(digits_cfg(digits_root, "unused"), path)
    predict_fn, divisor = loaded.predict, loaded.size_divisor
    with torch.no_grad():
        ref = predict_probs(predict_fn, normalize(image.copy(), cfg.data.mean, cfg.data.std)[None],
                            size_divisor=divisor)
    np.testing.assert_allclose(probs, ref[0].numpy(), atol=1e-6)


def test_eval_and_infer_take_a_checkpoint_without_a_config(sup_checkpoint, digits_root, tmp_path, capsys):
    import json
    path, _ = sup_checkpoint
    evaluate, infer = load_tool("eval").main, load_tool("infer").main
    assert evaluate([path, "--out", str(tmp_path / "a.json")]) == 0
    table = capsys.readouterr().out
    assert "digit_6" in table  # class names from the stored config
    assert evaluate([os.path.join(ROOT, "configs", "digits_sup.yaml"), path, f"data.root={digits_root}",
                     "data.labeled_list=splits/1_4/labeled.txt",
                     "data.unlabeled_list=splits/1_4/unlabeled.txt", "--out", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    assert infer([path, "--input", os.path.join(digits_root, "JPEGImages", "val_00000.jpg"),
                  "--out", str(tmp_path / "p")]) == 0
    assert os.path.isfile(tmp_path / "p" / "val_00000.png")


def test_a_checkpoint_without_a_config_is_one_line(tmp_path, capsys):
    torch.save({"model": {}}, tmp_path / "bare.pth")
    tool = load_tool("eval")  # in this process, through the tools' own error handling (run_cli)
    for args, message in (([str(tmp_path / "bare.pth")], "holds no config"),
                          ([os.path.join(ROOT, "configs", "digits_sup.yaml")],
                           "is a config: give the checkpoint after it")):
        with pytest.raises(SystemExit) as e:
            tool.run_cli(functools.partial(tool.main, args))
        err = capsys.readouterr().err
        assert (e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
                and message in err), err


def test_the_seg_ssl_command_runs_each_tool(sup_checkpoint, tmp_path, capsys):
    import configparser

    from seg_ssl import cli
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    assert "seg-ssl = seg_ssl.cli:main" in setup["options.entry_points"]["console_scripts"]
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", sup_checkpoint[0]])
    assert e.value.code == 0 and "digit_6" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["trian"])
    assert e.value.code == 2 and "unknown command 'trian'" in capsys.readouterr().err
    assert all(os.path.isfile(os.path.join(cli.tools_dir(), f + ".py")) for f in cli.COMMANDS.values())


# -- export ----------------------------------------------------------------------------------------

def test_export_onnx_is_checked_with_onnxruntime_against_pytorch(sup_checkpoint, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")  # the [export] extra; make test installs it
    from PIL import Image

    import seg_ssl
    path, cfg = sup_checkpoint
    export = load_tool("export").main
    out = tmp_path / "m.onnx"
    assert export([path, "--format", "onnx", "--out", str(out)]) == 0
    assert "onnxruntime vs PyTorch on 2 images: max |logit difference|" in capsys.readouterr().out
    # the file alone (normalisation inside) gives the checkpoint's prediction on a real image
    image_path = os.path.join(cfg.data.root, "JPEGImages", "val_00000.jpg")
    image = np.asarray(Image.open(image_path).convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": np.concatenate([image, image])})[0]
    assert logits.shape == (2, 11, 64, 64)
    probs = seg_ssl.load(path).predict_proba(image_path)
    np.testing.assert_allclose(torch.from_numpy(logits[0]).softmax(0).numpy(), probs, atol=1e-4)
    meta = {p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}
    assert "digit_6" in meta["class_names"]
    # a graph that computes something else is refused: the check is real
    from seg_ssl import export as ex
    net = ex.deployable(seg_ssl.load(path))
    with torch.no_grad():
        net.net.classifier[-1].bias += 1.0
    assert ex.onnx_max_difference(str(out), net, torch.rand(1, 3, 64, 64)) == pytest.approx(1.0, abs=1e-4)


def test_export_torchscript_and_weights_only(sup_checkpoint, tmp_path, capsys):
    import seg_ssl
    path, cfg = sup_checkpoint
    export = load_tool("export").main
    assert export([path, "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert "torch.jit.load vs PyTorch on 2 images" in capsys.readouterr().out
    # weights and config, no optimizer; fp16 halves them, and loads back to the same predictions
    full = tmp_path / "full.pth"
    model = seg_ssl.load(path)
    big = {"model": model.model.state_dict(), "config": cfg.to_dict(), "iteration": 5,
           "optimizer": {"state": {i: {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                                   for i, p in enumerate(model.model.parameters())}}}
    torch.save(big, full)
    for extra, name in (([], "w.pth"), (["--fp16"], "w16.pth")):
        assert export([str(full), "--weights-only", "--out", str(tmp_path / name), *extra]) == 0
        small = torch.load(tmp_path / name, weights_only=True)
        assert "optimizer" not in small and small["config"] == cfg.to_dict() and small["iteration"] == 5
    sizes = [os.path.getsize(tmp_path / n) for n in ("full.pth", "w.pth", "w16.pth")]
    assert sizes[1] < sizes[0] / 2.5 and sizes[2] < sizes[1] * 0.55, sizes
    image = os.path.join(cfg.data.root, "JPEGImages", "val_00001.jpg")
    np.testing.assert_allclose(seg_ssl.load(str(tmp_path / "w16.pth")).predict_proba(image),
                               model.predict_proba(image), atol=2e-2)
    r = run_tool("tools/export.py", path, "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "give --format torchscript|onnx, or --weights-only" in r.stderr


# -- metrics ---------------------------------------------------------------------------------------

def test_pred_dir_scores_a_listed_subset_with_class_names_and_saves_the_confusion(tmp_path, capsys):
    import csv
    import json

    from PIL import Image

    from seg_ssl.config import ConfigError
    from seg_ssl.evaluation.confusion import row_normalised
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 2]], np.uint8)
    for name in ("a", "b"):
        Image.fromarray(gt, mode="L").save(tmp_path / "gt" / f"{name}.png")
        Image.fromarray(pred, mode="L").save(tmp_path / "pred" / f"{name}.png")
    Image.fromarray(gt, mode="L").save(tmp_path / "gt" / "c.png")  # never predicted: not in the list
    (tmp_path / "list.txt").write_text("a\nJPEGImages/b.jpg SegmentationClass/b.png\n")
    evaluate = load_tool("eval").main
    common = ["--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt")]
    config = os.path.join(ROOT, "configs", "digits_sup.yaml")
    with pytest.raises(ConfigError, match="1 labels have no prediction"):  # the whole folder: c is missing
        evaluate([*common, "--num-classes", "11"])
    out = tmp_path / "m.json"
    assert evaluate([*common, "--list", str(tmp_path / "list.txt"), "--config", config, "--out",
                     str(out)]) == 0
    table = capsys.readouterr().out
    assert "background" in table and "digit_1" in table  # the config's names, not indices
    m = json.loads(out.read_text())
    assert m["class_names"][:2] == ["background", "digit_0"]
    expect = np.zeros((11, 11), int)
    for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
        if g != 255:
            expect[g, p] += 2  # two images
    assert np.array_equal(np.array(m["confusion"]), expect)
    rows = list(csv.reader(open(tmp_path / "m_confusion.csv")))
    assert rows[0][:3] == ["ground truth \\ prediction", "background", "digit_0"]
    assert rows[2][0] == "digit_0" and [int(v) for v in rows[2][1:4]] == [0, 4, 0]
    assert Image.open(tmp_path / "m_confusion.png").size[0] > 300
    norm = row_normalised(expect)
    np.testing.assert_allclose(norm[:3].sum(1), 1.0)
    assert norm[0, 0] == 0.5 and np.isnan(norm[5]).all()  # a class with no labeled pixel: blank
    with pytest.raises(ConfigError, match="1 listed ids have no label PNG"):
        (tmp_path / "bad.txt").write_text("a\nzzz\n")
        evaluate([*common, "--list", str(tmp_path / "bad.txt"), "--num-classes", "11"])


def test_compare_names_rows_from_the_metrics_or_the_runs_config(tmp_path, capsys):
    import json
    compare = load_tool("compare")
    a = {"IoU": [0.9, 0.2], "Acc": [1, 1], "mIoU": 0.55, "aAcc": 0.9, "mAcc": 0.7}
    for run, m in (("sup", a), ("cac", {**a, "IoU": [0.8, 0.4]})):
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.json").write_text(json.dumps(m))
        (tmp_path / run / "config.yaml").write_text("data:\n  class_names: [background, digit_0]\n")
    files = [str(tmp_path / r / "metrics.json") for r in ("sup", "cac")]
    assert compare.main(files) == 0  # a run's metrics.json: its config.yaml names the classes
    assert "digit_0" in capsys.readouterr().out
    (tmp_path / "e.json").write_text(json.dumps({**a, "class_names": ["sky", "road"]}))  # eval.py --out
    assert compare.main([str(tmp_path / "e.json"), files[0]]) == 0
    assert "road" in capsys.readouterr().out


# -- TensorBoard -----------------------------------------------------------------------------------

def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_panels_per_class_iou_config_and_named_pseudo_label_shares(digits_root, tmp_path):
    import io

    from PIL import Image

    from seg_ssl.engine.tb import panel_indices
    from seg_ssl.engine.trainer import Trainer
    from seg_ssl.viz.overlay import colorize, get_palette
    work = tmp_path / "w"
    trainer = Trainer(digits_cfg(digits_root, str(work), "train.iters=1"))
    try:
        trainer.train()
        val = trainer.val
    finally:
        trainer.close()
    (run1,) = sorted((work / "tb").iterdir())
    acc = _events(run1)
    panels = sorted(t for t in acc.Tags()["images"] if t.startswith("val_panels/"))
    assert len(panels) == 4
    first = np.asarray(Image.open(io.BytesIO(acc.Images(panels[0])[-1].encoded_image_string)).convert("RGB"))
    assert first.shape == (64, 64 * 3 + 4, 3)  # image | truth | prediction, 2-pixel gaps
    truth = colorize(val[panel_indices(len(val))[0]]["label"].numpy(), get_palette(None))
    assert np.array_equal(first[:, 66:130], truth)
    iou_tags = [t for t in acc.Tags()["scalars"] if t.startswith("val_IoU/")]
    # names, not indices
    assert "val_IoU/background" in iou_tags and all(not t[8:].isdigit() for t in iou_tags)
    assert "config/text_summary" in acc.Tags()["tensors"]
    assert acc.PluginTagToContent("hparams")  # the config's values as hparams, val/mIoU the metric

    # a fresh run (resume=null) in the same work dir writes a new folder; a resumed one continues it
    cps = ("cps.unsup_start_iter=0", "cps.cutmix=false", "train.log_interval=1")
    for resume, iters in (("null", 1), ("auto", 2)):
        trainer = Trainer(digits_cfg(digits_root, str(work), f"train.iters={iters}", f"resume={resume}", *cps,
                                     config="digits_cps.yaml"))
        try:
            trainer.train()
        finally:
            trainer.close()
        assert len(list((work / "tb").iterdir())) == 2
    run2 = sorted((work / "tb").iterdir())[1]
    scalars = _events(run2).Tags()["scalars"]
    assert "train/pseudo_cls/background" in scalars and "train/pseudo_cls/digit_0" in scalars
    assert not any(t.startswith("train/pseudo_cls/1") for t in scalars)
    steps = [e.step for e in _events(run2).Scalars("train/loss")]
    assert steps == [1, 2]  # one curve: the resume continued it
    log = (work / "train.log").read_text()
    assert "a new run; 1 earlier run(s) in tb/ stay apart" in log and "(continued)" in log


# -- figures ---------------------------------------------------------------------------------------

def test_overlays_draw_legend_colours_at_full_strength():
    from seg_ssl.viz.overlay import boundaries, get_palette, side_by_side
    lut = get_palette(None)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    mask = np.zeros((12, 10), np.uint8)
    mask[3:9, 2:7] = 7  # digit_6's colour in the VOC palette: a grey, (192, 128, 128) ... not yellow
    out = side_by_side(image, mask, lut, skip=(0,))
    left, right = out[:, :10], out[:, 12:]
    assert np.array_equal(right, lut[mask])  # the prediction panel: exactly the legend's colours
    edge = boundaries(mask) & (mask == 7)
    assert edge.sum() == 2 * 6 + 2 * 5 - 4  # a 1-pixel outline inside the region
    assert (left[edge] == lut[7]).all() and np.array_equal(left[~edge], image[~edge])  # no blending anywhere


def test_tsne_palette_is_categorical_and_both_models_share_one_feature_space():
    import matplotlib
    matplotlib.use("Agg")
    from seg_ssl.viz.overlay import categorical_palette, voc_palette
    from seg_ssl.viz.tsne import overlap_features

    def shades_of_one_colour(pal):
        """Pairs of colours that are one colour at two brightnesses (parallel RGB vectors)."""
        v = pal.astype(float)
        n = np.linalg.norm(v, axis=1)
        cos = (v @ v.T) / np.maximum(np.outer(n, n), 1e-9)
        np.fill_diagonal(cos, 0)
        return [(i, j) for i in range(len(v)) for j in range(i + 1, len(v))
                if n[i] and n[j] and cos[i, j] > 0.995]

    assert (1, 8) in shades_of_one_colour(voc_palette(11))  # digit_0 and digit_7: two dark reds
    pal = categorical_palette(11)
    assert len({tuple(c) for c in pal}) == 11 and shades_of_one_colour(pal) == []
    dist = np.sqrt(((pal[:, None].astype(float) - pal[None]) ** 2).sum(-1)) + np.eye(11) * 1e9
    assert dist.min() > 60
    sup = _segmentor("digits_sup.yaml")
    cac = _segmentor("digits_cac.yaml")
    assert cac.projector is not None and sup.projector is None
    torch.manual_seed(0)
    image, label = torch.randn(3, 64, 64), torch.randint(0, 11, (64, 64))
    dims = [overlap_features(m, image, label, 48, [0.3, 1.0], np.random.default_rng(0))[0].shape[1]
            for m in (sup, cac)]
    assert dims == [128, 128]  # both the decoder's 128 channels; CAC's projector (proj_dim 64) is not used
    with pytest.raises(ValueError, match="this model has no projector"):
        overlap_features(sup, image, label, 48, [0.3, 1.0], np.random.default_rng(0), space="projector")


def test_tsne_figure_explains_its_markers_and_feature_space(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seg_ssl.viz import tsne
    from seg_ssl.viz.overlay import categorical_palette
    captured = {}
    real_savefig = plt.Figure.savefig

    def keep(fig, *a, **k):
        captured["fig"] = fig
        return real_savefig(fig, *a, **k)

    g = torch.Generator().manual_seed(0)
    f1, y = torch.randn(30, 8, generator=g), torch.arange(30) % 3
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Figure, "savefig", keep)
        tsne.plot_tsne([("a", f1, f1 + 0.01, y)], ["background", "digit_0", "digit_1"],
                       categorical_palette(3), str(tmp_path / "t.png"))
    fig = captured["fig"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["background", "digit_0", "digit_1", "o: pixel in crop 1", "x: same pixel in crop 2"]
    assert "decoder features" in fig._suptitle.get_text()
    assert os.path.getsize(tmp_path / "t.png") > 5000


def _segmentor(config, *overrides):
    from seg_ssl.config import load_config
    from seg_ssl.methods import build_method
    torch.manual_seed(0)
    cfg = load_config(os.path.join(ROOT, "configs", config),
                      ["data.root=unused", "model.encoder_weights=null", *overrides])
    return build_method(cfg).build_model().eval()


# -- smoke runs ------------------------------------------------------------------------------------

def test_smoke_run_reaches_every_loss_term_and_the_log_explains_the_loss_scale(digits_root, tmp_path, capsys):
    from seg_ssl.config import ConfigError
    from seg_ssl.engine.smoke import smoke_overrides
    from seg_ssl.methods import METHODS
    train = load_tool("train").main
    work = tmp_path / "smoke"
    common = [os.path.join(ROOT, "configs", "digits_cps.yaml"), "--smoke", f"data.root={digits_root}",
              "data.labeled_list=splits/1_4/labeled.txt", "data.unlabeled_list=splits/1_4/unlabeled.txt",
              "data.num_workers=0", "data.val_batch_size=8", f"train.threads={THREADS}", f"work_dir={work}",
              "data.batch_size=2", "data.unlabeled_batch_size=2"]  # small: the test is about which terms run
    assert train(common) == 0  # digits_cps.yaml warms up for 500 iterations: the smoke run does not wait
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("smoke run of cps: 4 iterations; iterations 1-2 logged loss, sup1, sup2; "
                              "from iteration 3 also cps"), summary
    log = (work / "train.log").read_text()
    assert "it 4/4" in log and "it 1/4" in log  # every iteration logged
    assert "loss scale (cps): loss = sup1 + sup2" in log
    assert "half of sup" in METHODS["unimatch"].loss_scale_note and not METHODS["supervised"].loss_scale_note
    assert ("cac.unsup_start_iter=2" in smoke_overrides("cac")
            and "cac.pos_thresh=0.0" in smoke_overrides("cac"))
    with pytest.raises(ConfigError, match="cps.unsup_start_iter = 100 is not below train.iters = 4"):
        train([*common, "cps.unsup_start_iter=100"])  # the command line wins, and the check says so first
