import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, digits_cfg
from seg_ssl.config import Config, validate
from seg_ssl.data.overlap import CropPairPipeline, pair_iou, sample_overlapping_crops
from seg_ssl.engine.trainer import Trainer
from seg_ssl.methods.cac import overlap_pairs, unflip


@pytest.mark.parametrize("h, w, crop, bound", [(400, 500, 320, (0.1, 1.0)), (96, 80, 48, (0.3, 0.6)),
                                               (720, 1440, 720, (0.1, 1.0)), (64, 64, 48, (0.5, 0.9))])
def test_crop_pairs_respect_bounds_grid_and_image(h, w, crop, bound):
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(500):
        p = sample_overlapping_crops(h, w, crop, bound, stride=8, rng=rng)
        dy, dx = p.top2 - p.top1, p.left2 - p.left1
        assert dy % 8 == 0 and dx % 8 == 0
        assert 0 <= min(p.top1, p.top2) and max(p.top1, p.top2) + crop <= h
        assert 0 <= min(p.left1, p.left2) and max(p.left1, p.left2) + crop <= w
        assert bound[0] - 1e-9 <= p.iou <= bound[1] + 1e-9
        assert abs(p.iou - pair_iou(dy, dx, crop)) < 1e-12
        # both boxes are the same image region
        y0, x0, y1, x1 = p.box1
        v0, u0, v1, u1 = p.box2
        assert (p.top1 + y0, p.left1 + x0, p.top1 + y1, p.left1 + x1) == \
               (p.top2 + v0, p.left2 + u0, p.top2 + v1, p.left2 + u1)
        assert (y1 - y0) * (x1 - x0) == (crop - abs(dy)) * (crop - abs(dx))
        assert all(c % 8 == 0 for c in p.box1 + p.box2)
        pairs.append((p.top1, p.left1, p.top2, p.left2))
    assert len(set(pairs)) > 20  # drawn from the feasible set, not one pair


def test_infeasible_bound_raises_naming_it():
    with pytest.raises(ValueError, match=r"iou_bound \[0.1, 0.2\] cannot be met"):
        sample_overlapping_crops(64, 64, 64, (0.1, 0.2))
    with pytest.raises(ValueError, match="smaller than crop_size"):
        sample_overlapping_crops(40, 64, 48, (0.1, 1.0))


def digits_data_cfg():
    return Config(validate({"data": {"root": "x", "labeled_list": "l", "val_list": "v", "num_classes": 11,
                                     "crop_size": 48, "scale_range": [0.8, 1.6]}, "train": {"iters": 1}}))


def test_aligned_overlap_of_unaugmented_crops_is_identical():
    """With photometric changes off, the overlap seen from both crops (flips undone, padding
    excluded) must be the same pixels: use stride-8 average-pooled images as 'features'."""
    d = digits_data_cfg()
    pipe = CropPairPipeline(d.data, (0.1, 1.0), 8, hflip=True, color_jitter=0, grayscale=0, blur=0)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (50, 61, 3), dtype=np.uint8)  # odd size: rescale + padding
    items = [pipe(image, None, seed) for seed in range(24)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    assert batch["flip1"].any() and not batch["flip1"].all()
    feats = [unflip(F.avg_pool2d(batch[f"image{i}"], 8), batch[f"flip{i}"]) for i in (1, 2)]
    valid = [unflip(-F.max_pool2d(-batch[f"valid{i}"].float()[:, None], 8)[:, 0], batch[f"flip{i}"]) > 0.5
             for i in (1, 2)]
    f1, f2, q1, q2 = overlap_pairs(feats[0], feats[1], feats[0], feats[1], valid[0], valid[1],
                                   batch["box1"], batch["box2"], 8)
    assert f1.shape[0] > 50
    torch.testing.assert_close(f1, f2)
    assert (~batch["valid1"]).any()  # padding existed and was excluded


def test_cac_training_iterations_on_digits(digits_root, tmp_path):
    cfg = digits_cfg(digits_root, str(tmp_path / "cac"), "method=cac", "data.crop_size=48",
                     "model.projector=true", "model.proj_dim=32", "cac.scale_range=[1.0,1.5]",
                     "cac.unsup_start_iter=2", "cac.pos_thresh=0.0", "cac.selected_num=100", "cac.hflip=false",
                     "cac.weight_unsup=0.5", "train.iters=6")
    trainer = Trainer(cfg)
    logs = []
    original = trainer.step

    def record(labeled, unlabeled):
        out = original(labeled, unlabeled)
        logs.append(out)
        return out

    trainer.step = record
    trainer.train()
    assert "unsup" not in logs[0] and "unsup" in logs[2]
    for log in logs[2:]:
        assert torch.isfinite(torch.as_tensor(log["loss"]))
        assert log["unsup"] > 0 and log["pos_pairs_1"] + log["pos_pairs_2"] > 0
        assert 0 < log["neg_per_pos"] <= 2 * 100 * 2  # fresh negatives of both crops + one bank step
        assert 0.1 <= log["crop_iou"] <= 1.0
    assert len(trainer.method.bank) == 1
    assert trainer.model.projector[0].weight.grad is not None


def test_tsne_tool_on_baseline_and_cac_checkpoints(digits_root, tmp_path):
    import subprocess
    import sys
    runs = {}
    for name, extra in (("sup", ()), ("cac", ("method=cac", "model.projector=true", "model.proj_dim=16",
                                              "cac.unsup_start_iter=0", "cac.pos_thresh=0.0"))):
        cfg = digits_cfg(digits_root, str(tmp_path / name), "train.iters=2", "data.crop_size=48",
                         "cac.scale_range=[1.0,1.5]", *extra)
        Trainer(cfg).train()
        runs[name] = str(tmp_path / name / "latest.pth")
    out = tmp_path / "tsne.png"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "tsne.py"), os.path.join(ROOT, "configs", "digits_cac.yaml"),
                        runs["sup"], runs["cac"], "--images", "3", "--out", str(out), f"data.root={digits_root}"],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "alignment" in ln]
    assert len(lines) == 2 and out.stat().st_size > 10_000
    from seg_ssl.viz.tsne import alignment, uniformity
    x = F.normalize(torch.randn(64, 8), dim=1)
    assert alignment(x, x) == 0.0 and alignment(x, -x) == pytest.approx(4.0)
    assert uniformity(x) < uniformity(F.normalize(x + 5.0, dim=1))  # clumped points: higher potential
