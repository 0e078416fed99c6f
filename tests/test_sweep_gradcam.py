import csv
import json
import os
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import ROOT, SMALL_NET, digits_cfg
from helpers import load_tool, run_tool
from seg_ssl.engine.checkpoint import load_checkpoint
from seg_ssl.engine.sweep import cell_name, parse_grid, split_values


def test_the_grid_is_the_product_of_its_axes_and_the_report_gives_mean_and_std_over_seeds(tmp_path):
    from seg_ssl.engine.sweep import cells, write_reports
    axes = parse_grid(["data.crop_size=32,48", "train.lr=0.001,0.002"])
    grid = list(cells(axes, [0, 1]))  # the product of the axes, each with every seed
    assert len(grid) == 8 and grid[0] == ([("data.crop_size", "32"), ("train.lr", "0.001")], 0)
    assert {(a[0][1], a[1][1], s) for a, s in grid} == {(c, lr, s) for c in ("32", "48")
                                                        for lr in ("0.001", "0.002") for s in (0, 1)}
    rows = [{"values": dict(a), "seed": s, "train_seconds": 10.0, "status": "ok",
             "mIoU": 0.1 * (1 + i % 2) + 0.01 * i}
            for i, (a, s) in enumerate(grid)]
    write_reports(rows, axes, str(tmp_path))
    table = (tmp_path / "sweep.md").read_text().splitlines()
    # per cell the mean and the sample std over seeds of mIoU (in %): cell 0 has 10.00 and 21.00
    assert table[2] == "| 32 | 0.001 | 15.50 | 7.78 | 2/2 | 10 |", table
    assert len(table) == 6 and (tmp_path / "sweep_miou.png").stat().st_size > 5000


def test_grid_values_split_at_top_level_commas_and_a_key_given_twice_is_an_error():
    assert split_values("256,320,384") == ["256", "320", "384"]
    assert split_values("[0.1,1.0],[0.3,1.0]") == ["[0.1,1.0]", "[0.3,1.0]"]
    assert split_values('"[0.1,1.0]","[0.3, 1.0]"') == ["[0.1,1.0]", "[0.3, 1.0]"]
    axes = parse_grid(["data.crop_size=32,48", "cac.iou_bound=[0.1,1.0],[0.3,1.0]"])
    assert axes == [("data.crop_size", ["32", "48"]), ("cac.iou_bound", ["[0.1,1.0]", "[0.3,1.0]"])]
    assert cell_name([("data.crop_size", "32"), ("cac.iou_bound", "[0.1,1.0]")], 1) == \
        "crop_size=32__iou_bound=0.1,1.0__seed=1"
    with pytest.raises(ValueError, match="a key appears twice"):
        parse_grid(["a=1", "a=2"])


SWEEP_COMMON = ("data.labeled_list=splits/1_4/labeled.txt", "data.num_workers=0", "data.val_batch_size=8",
                "train.eval_interval=0", "train.threads=1", *SMALL_NET)  # the grids set their own crops


def sweep(out, digits_root, *extra):
    """tools/sweep.py in this process (its runs are processes, as always); returns its stdout."""
    main = load_tool("sweep").main
    return main([os.path.join(ROOT, "configs", "digits_sup.yaml"), "--out", str(out),
                 f"data.root={digits_root}", *SWEEP_COMMON, *extra])


@pytest.mark.slow
def test_sweep_runs_every_cell_records_a_failed_one_writes_reports_and_resumes(digits_root, tmp_path, capsys):
    out = tmp_path / "sw"
    # two axes, two cells (each a process: mostly imports); the optimizer refuses a negative weight
    # decay when the run builds it: that cell fails, is recorded, and the sweep goes on
    grid = ("--grid", "train.weight_decay=-1,0.0001", "--grid", "train.lr=0.002", "train.iters=2")
    assert sweep(out, digits_root, *grid) == 0
    rows = {row["train.weight_decay"]: row for row in csv.DictReader(open(out / "sweep.csv"))}
    assert rows.keys() == {"-1", "0.0001"} and {row["train.lr"] for row in rows.values()} == {"0.002"}
    assert rows["-1"]["status"] == "failed" and "Invalid weight_decay value: -1.0" in rows["-1"]["error"]
    assert rows["0.0001"]["status"] == "ok"
    cell = out / cell_name([("train.weight_decay", "0.0001"), ("train.lr", "0.002")], 0)
    # the row reports the cell's own final evaluation
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["iteration"] == 2 and float(rows["0.0001"]["mIoU"]) == pytest.approx(metrics["mIoU"])
    assert (out / "sweep_miou.png").stat().st_size > 5000 and "mIoU mean" in (out / "sweep.md").read_text()
    table = (out / "sweep.md").read_text()  # one seed: no spread (not 0.00)
    assert table.count("| - | 1/1 |") == 1 and table.count("| - | 0/1 |") == 1
    assert (cell / "config.yaml").is_file() and "weight_decay: 0.0001" in (cell / "config.yaml").read_text()
    # a finished cell keeps weights and config only (no optimizer state)
    for name in ("latest.pth", "best.pth"):
        ckpt = load_checkpoint(str(cell / name))
        assert ("optimizer" not in ckpt and ckpt["config"]["train"]["weight_decay"] == 1e-4
                and ckpt["iteration"] == 2)
    assert json.loads((cell / "result.json").read_text())["checkpoint_mb_saved"] > 0
    # the same command again: the finished cell is skipped, the failed one runs again
    capsys.readouterr()
    assert sweep(out, digits_root, *grid) == 0
    printed = capsys.readouterr().out
    assert "skip weight_decay=0.0001__lr=0.002__seed=0" in printed
    assert "run  weight_decay=-1__lr=0.002__seed=0" in printed and "run  weight_decay=0.0001" not in printed


@pytest.mark.slow
def test_a_rerun_with_other_settings_extends_or_refuses_finished_cells(digits_root, tmp_path, capsys):
    from seg_ssl.config import ConfigError
    out = tmp_path / "sw"
    cell = out / "lr=0.001__seed=0"

    def one_cell(*extra):
        return sweep(out, digits_root, "--grid", "train.lr=0.001", *extra)

    assert one_cell("train.iters=1") == 0
    assert one_cell("train.iters=2") == 0  # a longer schedule continues the finished cell ...
    printed = capsys.readouterr().out
    assert "extend lr=0.001__seed=0: train.iters 1 -> 2" in printed
    # ... from iteration 0, as its checkpoints keep weights only
    assert "restart lr=0.001__seed=0 from iteration 0: its checkpoints keep weights only" in printed
    assert json.loads((cell / "result.json").read_text())["iteration"] == 2
    with pytest.raises(ConfigError) as refused:  # another model: its old result answers nothing
        one_cell("train.iters=2", "model.dropout=0.3")
    assert str(refused.value) == (
        f"sweep: 1 cell(s) in {out} ran with other settings (lr=0.001__seed=0: model.dropout 0.0 -> 0.3); "
        "pass --rerun-changed to train them again (old folders kept as <cell>.old) or choose another --out")
    assert json.loads((cell / "result.json").read_text())["iteration"] == 2  # nothing touched
    assert one_cell("train.iters=2", "model.dropout=0.3", "--rerun-changed") == 0
    assert "dropout: 0.3" in (cell / "config.yaml").read_text()
    assert "dropout: 0.0" in (out / "lr=0.001__seed=0.old" / "config.yaml").read_text()


@pytest.mark.slow
def test_sigterm_to_a_sweep_stops_its_run_and_records_the_time(digits_root, tmp_path):
    import fcntl
    import signal
    out = tmp_path / "sw"
    cell = out / "lr=0.001__seed=0"
    sweep_cmd = ("tools/sweep.py", "configs/digits_sup.yaml", "--grid", "train.lr=0.001", "--out", str(out),
                 f"data.root={digits_root}", "data.labeled_list=splits/1_4/labeled.txt", "data.num_workers=0",
                 "data.val_batch_size=8", "train.eval_interval=0", "train.threads=1", "train.log_interval=1",
                 "train.iters=100000", "data.batch_size=2")
    proc = run_tool(*sweep_cmd, popen=True)
    assert proc.stdout.readline().startswith("run  lr=0.001__seed=0")
    log = cell / "sweep_run.log"
    while " it 3/" not in (log.read_text() if log.exists() else ""):  # the run is training
        assert proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=600)
    assert proc.returncode == 130 and "stopped lr=0.001__seed=0 (signal 15)" in rest
    # the run has ended (its work dir lock is free), saved where it stopped, and left no result
    with open(cell / ".lock") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert "stopped (signal 15)" in log.read_text() and not (cell / "result.json").exists()
    assert 3 <= load_checkpoint(str(cell / "latest.pth"))["iteration"] < 100000
    assert float((cell / "sweep_seconds").read_text()) > 0


class ChannelLogits(nn.Module):
    """A hand-set segmenter: the logit of class c at a pixel is input channel c (through a 1x1
    identity conv named like an encoder block, the Grad-CAM layer). The gradient of class c's
    target reaches only channel c, so its Grad-CAM is ReLU(channel c), min-max scaled: the map is
    known exactly, whatever the CPU's rounding."""
    size_divisor = 8

    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer1 = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.encoder.layer1.weight.copy_(torch.eye(3).view(3, 3, 1, 1))

    def forward(self, x):
        return self.encoder.layer1(x)


def test_gradcam_lights_up_exactly_where_the_class_evidence_is():
    from seg_ssl.viz.gradcam import default_layer, gradcam_map
    model = ChannelLogits()
    image = torch.zeros(3, 30, 27)  # not a multiple of 8: padded for the forward, cropped back
    image[0, 3:13, 4:16] = 2.0      # class 0's evidence
    image[1, 18:28, 10:25] = 1.5    # class 1's evidence
    image[2] = 0.5                  # class 2 wins everywhere else
    assert default_layer(model) == "encoder.layer1"
    for cls in (0, 1):
        heat, pred = gradcam_map(model, image, cls)
        assert heat.shape == pred.shape == (30, 27)
        expect = (image[cls] > 0).numpy().astype(np.float32)
        np.testing.assert_allclose(heat, expect, atol=1e-5)
        assert np.array_equal(pred, image.argmax(0).numpy())
    with pytest.raises(ValueError, match="'encoder.layer9' is not a module of the model"):
        gradcam_map(model, image, 0, layer="encoder.layer9")


def _segmentor(config, *overrides):
    """The model a config builds, randomly initialised (no weights read)."""
    from seg_ssl.config import load_config
    from seg_ssl.methods import build_method
    torch.manual_seed(0)
    cfg = load_config(os.path.join(ROOT, "configs", config),
                      ["data.root=unused", "model.encoder_weights=null",
                       *overrides])
    return build_method(cfg).build_model().eval()


@pytest.mark.parametrize("config, stage, earlier, block", [
    # the demo's encoder: a timm (tu-) EfficientNet, whose encoder.model returns a list of maps
    ("digits_lite0_sup.yaml", "encoder.model.blocks.6", "encoder.model.blocks.4", "encoder.model.blocks.6.0"),
    ("digits_sup.yaml", "encoder.layer4", "encoder.layer3", "encoder.layer4.1"),  # an smp ResNet
])
def test_gradcam_runs_on_every_encoder_family_with_its_default_layer(config, stage, earlier, block):
    from seg_ssl.viz.gradcam import default_layer, earlier_layer, gradcam_map, resolve_layer
    model = _segmentor(config, "model.encoder_depth=5")
    assert default_layer(model) == stage and earlier_layer(model, stage) == earlier
    image = torch.randn(3, 40, 56)  # padded to the output stride for the forward, cropped back
    cls = int(np.bincount(gradcam_map(model, image, 0)[1].ravel()).argmax())  # a class predicted somewhere
    heat, pred = gradcam_map(model, image, cls)
    assert (heat.shape == pred.shape == (40, 56) and np.isfinite(heat).all()
            and 0 <= heat.min() <= heat.max() <= 1)
    gradcam_map(model, image, cls, layer=block)  # a deeper name works as well
    # a layer the encoder does not have: refused with every usable name, the deeper ones included
    with pytest.raises(ValueError, match="'encoder.layer2' is not a module") if "model" in stage else \
            pytest.raises(ValueError, match="'encoder.layer9' is not a module"):
        resolve_layer(model, "encoder.layer2" if "model" in stage else "encoder.layer9")
    try:
        resolve_layer(model, "encoder.layer2" if "model" in stage else "encoder.layer9")
    except ValueError as e:
        listed = str(e).split("usable layers")[1]
        assert stage in listed and earlier in listed and block in listed and "decoder" in listed
    if "model" in stage:  # exists, but returns a list: named as such, not a crash inside grad-cam
        with pytest.raises(ValueError, match="'encoder.model' does not output one feature map"):
            gradcam_map(model, image, cls, layer="encoder.model")


def test_a_zero_map_says_why():
    from seg_ssl.viz.gradcam import gradcam_map, zero_map_reason
    model = ChannelLogits()
    image = torch.zeros(3, 16, 16)
    image[1, 4:12, 4:12] = 1.0  # class 1 there, class 0 and 2 tie (0) elsewhere: argmax gives 0
    heat, pred = gradcam_map(model, image, 2)  # class 2 wins nowhere
    assert (pred == 2).sum() == 0 and zero_map_reason(heat, 0, "two", "encoder.layer1") == \
        "two is predicted on no pixel, so there is nothing to explain"
    image = torch.tensor([-1.0, -2.0, -3.0]).view(3, 1, 1).expand(3, 16, 16).clone()
    heat, pred = gradcam_map(model, image, 0)  # class 0 everywhere, its activation negative everywhere
    assert (pred == 0).all() and heat.max() == 0
    assert "weighted activation at encoder.layer1 is negative" in zero_map_reason(heat, 256, "zero",
                                                                                   "encoder.layer1")
    # a uniform map is scaled to zero as well
    heat, _ = gradcam_map(model, torch.ones(3, 16, 16) * torch.tensor([2.0, 1.0, 0.0]).view(3, 1, 1), 0)
    assert heat.max() == 0 and "the same everywhere" in zero_map_reason(heat, 256, "zero", "encoder.layer1")
    image = torch.zeros(3, 16, 16)
    image[0], image[0, :8] = 1.0, 2.0  # class 0 everywhere, its evidence stronger in the top half
    heat, _ = gradcam_map(model, image, 0)
    assert (heat[:8].min() == pytest.approx(1.0)
            and zero_map_reason(heat, 256, "zero", "encoder.layer1") is None)


def test_gradcam_cli_writes_one_titled_png_per_image(digits_root, tmp_path, capsys):
    from PIL import Image

    from seg_ssl.methods import build_method
    cfg = digits_cfg(digits_root, str(tmp_path / "w"))
    torch.manual_seed(0)
    torch.save({"model": build_method(cfg).build_model().state_dict()}, tmp_path / "m.pth")
    gradcam = load_tool("gradcam").main
    assert gradcam([os.path.join(ROOT, "configs", "digits_sup.yaml"), str(tmp_path / "m.pth"),
                    "--image", os.path.join(digits_root, "JPEGImages"), "--limit", "2", "--class", "digit_3",
                    "--out", str(tmp_path / "cam"), f"data.root={digits_root}"]) == 0
    assert sorted(os.listdir(tmp_path / "cam")) == ["train_00000_cam_digit_3.png",
                                                    "train_00001_cam_digit_3.png"]
    assert len(capsys.readouterr().out.splitlines()) == 2  # one line per image, --limit 2 of 120
    w, h = Image.open(tmp_path / "cam" / "train_00000_cam_digit_3.png").size
    assert w > h > 64  # a figure (title, colour bar), not the bare 64x64 overlay


def test_annotated_figure_has_title_legend_and_colour_bar():
    import matplotlib.pyplot as plt

    from seg_ssl.viz.overlay import annotated_figure
    fig = annotated_figure(np.zeros((64, 64, 3), np.uint8), "img: prediction",
                           legend={"background": (0, 0, 0), "digit_3": (128, 0, 0)})
    ax = fig.axes[0]
    assert ax.get_title() == "img: prediction"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["background", "digit_3"]
    plt.close(fig)
    fig = annotated_figure(np.zeros((64, 64, 3), np.uint8), "cam", heat_scale=True)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "Grad-CAM"  # the colour bar
    plt.close(fig)
