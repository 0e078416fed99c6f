import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, digits_cfg
from seg_ssl.engine.sweep import cell_name, parse_grid, split_values
from seg_ssl.engine.trainer import Trainer


def test_grid_parsing():
    assert split_values("256,320,384") == ["256", "320", "384"]
    assert split_values("[0.1,1.0],[0.3,1.0]") == ["[0.1,1.0]", "[0.3,1.0]"]
    assert split_values('"[0.1,1.0]","[0.3, 1.0]"') == ["[0.1,1.0]", "[0.3, 1.0]"]
    axes = parse_grid(["data.crop_size=32,48", "cac.iou_bound=[0.1,1.0],[0.3,1.0]"])
    assert axes == [("data.crop_size", ["32", "48"]), ("cac.iou_bound", ["[0.1,1.0]", "[0.3,1.0]"])]
    assert cell_name([("data.crop_size", "32"), ("cac.iou_bound", "[0.1,1.0]")], 1) == \
        "crop_size=32__iou_bound=0.1,1.0__seed=1"
    with pytest.raises(ValueError, match="a key appears twice"):
        parse_grid(["a=1", "a=2"])


def sweep(out, digits_root, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "sweep.py"), os.path.join(ROOT, "configs", "digits_sup.yaml"),
           "--grid", "data.crop_size=32,48", "--grid", "train.lr=0.001,0.002", "--out", str(out),
           f"data.root={digits_root}", "data.labeled_list=splits/1_4/labeled.txt", "data.num_workers=0",
           "data.val_batch_size=8", "train.iters=2", "train.eval_interval=0", "train.threads=1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_sweep_runs_every_cell_writes_reports_and_resumes(digits_root, tmp_path):
    out = tmp_path / "sw"
    r = sweep(out, digits_root)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert len(rows) == 4 and all(row["status"] == "ok" for row in rows)
    assert {(row["data.crop_size"], row["train.lr"]) for row in rows} == {("32", "0.001"), ("32", "0.002"),
                                                               ("48", "0.001"), ("48", "0.002")}
    assert all(0 <= float(row["mIoU"]) <= 1 for row in rows)
    assert (out / "sweep_miou.png").stat().st_size > 5000 and "mIoU mean" in (out / "sweep.md").read_text()
    cell = out / "crop_size=32__lr=0.001__seed=0"
    assert (cell / "config.yaml").is_file() and "crop_size: 32" in (cell / "config.yaml").read_text()
    # an interrupted cell (no result yet) resumes; finished cells are skipped
    os.remove(cell / "result.json")
    r = sweep(out, digits_root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("skip ") == 3 and "run  crop_size=32__lr=0.001__seed=0" in r.stdout
    assert "already trained to iteration 2" in (cell / "sweep_run.log").read_text()


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(digits_root, tmp_path):
    out = tmp_path / "bad"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sweep.py"),
                        os.path.join(ROOT, "configs", "digits_sup.yaml"), "--grid", "data.crop_size=30,32",
                        "--out", str(out), f"data.root={digits_root}", "data.labeled_list=splits/1_4/labeled.txt",
                        "data.num_workers=0", "train.iters=1", "train.eval_interval=0"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = {row["data.crop_size"]: row for row in csv.DictReader(open(out / "sweep.csv"))}
    assert rows["30"]["status"] == "failed" and "not divisible by the output stride" in rows["30"]["error"]
    assert rows["32"]["status"] == "ok"


def test_gradcam_is_larger_on_the_target_class(digits_root, tmp_path):
    from seg_ssl.data.dataset import build_split
    from seg_ssl.data.transforms import val_pipeline
    from seg_ssl.viz.gradcam import gradcam_map
    cfg = digits_cfg(digits_root, str(tmp_path / "w"), "train.iters=150", "train.lr=0.003",
                     "data.labeled_list=ImageSets/Segmentation/train.txt")
    trainer = Trainer(cfg)
    trainer.train()
    model = trainer.model.eval()
    val = build_split(cfg.data, "val", val_pipeline(cfg.data))
    inside, outside = [], []
    for i in range(len(val)):
        item = val[i]
        with torch.no_grad():
            pred = model(item["image"][None])[0].argmax(0)
        gt = item["label"]
        classes = [c for c in torch.unique(gt).tolist() if 0 < c < 255 and ((pred == c) & (gt == c)).sum() > 20]
        if not classes:
            continue
        heat, _ = gradcam_map(model, item["image"], classes[0])
        assert heat.shape == (64, 64) and np.isfinite(heat).all()
        target = (gt == classes[0]).numpy()
        inside.append(heat[target].mean())
        outside.append(heat[~target].mean())
    assert len(inside) >= 3
    assert np.mean(inside) > np.mean(outside)
    # the CLI writes one PNG per image
    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gradcam.py"),
                        os.path.join(ROOT, "configs", "digits_sup.yaml"), str(tmp_path / "m.pth"),
                        "--image", os.path.join(digits_root, "JPEGImages", "val_00001.jpg"), "--class", "digit_3",
                        "--out", str(tmp_path / "cam"), f"data.root={digits_root}"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path / "cam") == ["val_00001_cam_digit_3.png"]
