import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, digits_cfg
from helpers import record_steps
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


def test_crop_pairs_carry_the_hidden_truth_through_the_same_geometry(tmp_path):
    """With data.unlabeled_truth a label goes through the crops' rescale, crop and flip: here the
    label is the image's red channel / 20, so each crop's label must equal its own red channel / 20."""
    d = digits_cfg("unused", str(tmp_path), "method=cac", "data.crop_size=48", "data.mean=[0,0,0]",
                   "data.std=[1,1,1]").data
    pipe = CropPairPipeline(d, (0.1, 1.0), 8, hflip=True, color_jitter=0, grayscale=0, blur=0)
    rng = np.random.default_rng(1)
    label = rng.integers(0, 11, (56, 72), dtype=np.uint8)
    image = np.repeat((label * 20)[..., None], 3, axis=2).astype(np.uint8)
    flips = []
    for seed in range(12):
        out = pipe(image, label, seed)
        for i in (1, 2):
            flips.append(bool(out[f"flip{i}"]))
            real = out[f"valid{i}"]
            red = (out[f"image{i}"][0] * 255 / 20).round().long()
            assert torch.equal(out[f"label{i}"][real], red[real])
    assert any(flips) and not all(flips)
    assert "label1" not in pipe(image, None, 0)


def test_cac_trains_its_warm_up_then_every_term_with_a_bank(digits_root, tmp_path):
    cfg = digits_cfg(digits_root, str(tmp_path / "cac"), "method=cac", "data.crop_size=48",
                     "model.proj_dim=32", "cac.scale_range=[1.0,1.5]",
                     "cac.unsup_start_iter=2", "cac.pos_thresh=0.0", "cac.selected_num=100",
                     "cac.hflip=false", "cac.weight_unsup=0.5", "train.iters=6", "data.unlabeled_truth=true")
    trainer = Trainer(cfg)
    logs = record_steps(trainer)
    trainer.train()
    assert "unsup" not in logs[0] and "unsup" in logs[2]
    assert logs[0]["loss"] == logs[0]["sup"]  # labeled-only warm-up
    for log in logs[2:]:
        assert log["loss"] == pytest.approx(log["sup"] + 0.5 * log["unsup"], rel=1e-5)
        assert log["unsup"] > 0 and log["pos_pairs_1"] + log["pos_pairs_2"] > 0
        assert 0 < log["neg_per_pos"] <= 2 * 100 * 2  # fresh negatives of both crops + one bank step
        assert 0.1 <= log["crop_iou"] <= 1.0
        assert "pl_acc" in log and "pl_kept_acc" in log  # pos_thresh 0 keeps every cell
    assert "pl_acc" not in logs[0]
    assert len(trainer.method.bank) == 1
    assert trainer.model.projector[0].weight.grad is not None


@pytest.mark.slow
def test_tsne_tool_on_baseline_and_cac_checkpoints(digits_root, tmp_path, capsys):
    from helpers import load_tool
    runs = {}
    for name, extra in (("sup", ()), ("cac", ("method=cac", "model.proj_dim=16",
                                              "cac.unsup_start_iter=0", "cac.pos_thresh=0.0"))):
        cfg = digits_cfg(digits_root, str(tmp_path / name), "train.iters=2", "data.crop_size=48",
                         "cac.scale_range=[1.0,1.5]", *extra)
        Trainer(cfg).train()
        runs[name] = str(tmp_path / name / "latest.pth")
    out = tmp_path / "tsne.png"
    cell = tmp_path / "crop_size=48__seed=0"  # a sweep cell's folder: the path holds "="
    cell.mkdir()
    os.rename(runs["cac"], cell / "latest.pth")
    tsne = load_tool("tsne").main
    assert tsne([os.path.join(ROOT, "configs", "digits_cac.yaml"), runs["sup"], str(cell / "latest.pth"),
                 "--images", "3", "--out", str(out), f"data.root={digits_root}", "data.crop_size=64"]) == 0
    printed = capsys.readouterr().out
    lines = [ln for ln in printed.splitlines() if "alignment" in ln]
    assert len(lines) == 2 and out.stat().st_size > 10_000
    # one feature space for both: the decoder's (the labeled-only model has no projector)
    assert ("feature space: decoder features (stride 8, L2-normalised), the same for every checkpoint"
            in printed)
    # crops as large as the 64 x 64 images would be one and the same view: smaller views are used
    assert "note: data.crop_size 64 covers whole images (64x64)" in printed and "views of 48 px" in printed
    assert all(float(ln.split("alignment ")[1].split(",")[0]) > 0 for ln in lines)
    from seg_ssl.viz.tsne import alignment, uniformity
    x = F.normalize(torch.randn(64, 8), dim=1)
    assert alignment(x, x) == 0.0 and alignment(x, -x) == pytest.approx(4.0)
    assert uniformity(x) < uniformity(F.normalize(x + 5.0, dim=1))  # clumped points: higher potential


# ---- the wiring of CAC's training step, on a model whose outputs the test writes ----------------
# Two unlabeled images, crops of 32 px (4 x 4 feature cells), crop 2 shifted 8 px down from crop 1.
# Every feature cell's embedding is the one-hot vector of its own id, so each pair, anchor and
# negative the step builds can be traced back to the cell it came from. The model returns its
# outputs in the crops' (flipped) frame; the step must undo the flips before it aligns anything.
CELLS = 4
FLIP1, FLIP2 = torch.tensor([True, False]), torch.tensor([False, True])
BOX1, BOX2 = torch.tensor([[8, 0, 32, 32]] * 2), torch.tensor([[0, 0, 24, 32]] * 2)


def cell_id(crop, s, i, j):
    return ((crop * 2 + s) * CELLS + i) * CELLS + j


def pixel_valid(crop):
    """(2, 32, 32) validity in the true frame: crop 2 of image 1 is padding in its last 8 columns."""
    v = torch.ones(2, 32, 32, dtype=torch.bool)
    if crop == 1:
        v[1, :, 24:] = False
    return v


def cell_valid(crop, s, j):
    return not (crop == 1 and s == 1 and j == CELLS - 1)


class WrittenOutputs(torch.nn.Module):
    """``proj`` and ``pseudo_logits`` of both crops given in the true frame, returned flipped."""

    def __init__(self, proj, pseudo):
        super().__init__()
        self.proj, self.pseudo = proj, pseudo  # lists over the two crops of (2, C, 4, 4)
        self.bias = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x, output="logits", groups=None, fp_dropout=0.0):
        assert output == "proj"
        self.groups = groups

        def as_seen(t, flips):
            return torch.where(flips.view(-1, 1, 1, 1), t.flip(-1), t)
        nl = x.shape[0] - 4
        proj = [torch.zeros(nl, *self.proj[0].shape[1:])] + [as_seen(p, f) for p, f in
                                                             zip(self.proj, (FLIP1, FLIP2), strict=True)]
        pseudo = [torch.zeros(nl, 3, CELLS, CELLS)] + [as_seen(p, f) for p, f in
                                                       zip(self.pseudo, (FLIP1, FLIP2), strict=True)]
        return {"logits": self.bias.view(1, -1, 1, 1).expand(x.shape[0], 3, *x.shape[-2:]),
                "proj": torch.cat(proj), "pseudo_logits": torch.cat(pseudo)}


def written_outputs(scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    proj = []
    for crop in (0, 1):
        p = torch.zeros(2, 2 * 2 * CELLS * CELLS, CELLS, CELLS)
        for s in range(2):
            for i in range(CELLS):
                for j in range(CELLS):
                    p[s, cell_id(crop, s, i, j), i, j] = scale
        proj.append(p.requires_grad_())
    pseudo = [torch.randn(2, 3, CELLS, CELLS, generator=g) * 3 for _ in (0, 1)]
    return WrittenOutputs(proj, pseudo)


def crop_batch():
    def seen(v, flips):
        return torch.where(flips.view(-1, 1, 1), v.flip(-1), v)
    labeled = {"image": torch.zeros(2, 3, 32, 32), "label": torch.zeros(2, 32, 32, dtype=torch.long)}
    unlabeled = {"image1": torch.zeros(2, 3, 32, 32), "image2": torch.zeros(2, 3, 32, 32),
                 "valid1": seen(pixel_valid(0), FLIP1), "valid2": seen(pixel_valid(1), FLIP2),
                 "flip1": FLIP1, "flip2": FLIP2, "box1": BOX1, "box2": BOX2, "iou": torch.full((2,), 0.6)}
    return labeled, unlabeled


def cac_method(digits_root, tmp_path, *extra):
    from seg_ssl.methods.cac import CAC
    return CAC(digits_cfg(digits_root, str(tmp_path), "method=cac", "data.num_classes=3",
                          "data.class_names=null", "data.crop_size=32", "cac.unsup_start_iter=0",
                          "cac.weight_unsup=1.0", "cac.pos_thresh=0.5", "cac.selected_num=1000",
                          "cac.step_save=0", *extra))


def recorded_loss_calls(monkeypatch):
    import seg_ssl.methods.cac as cac_module
    calls = []
    real = cac_module.directional_contrastive_loss

    def recording(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(cac_module, "directional_contrastive_loss", recording)
    return calls


def test_cac_step_pairs_unflipped_cells_and_sends_the_gradient_to_the_less_confident_crop(
        digits_root, tmp_path, monkeypatch):
    method = cac_method(digits_root, tmp_path)
    model = written_outputs()
    calls = recorded_loss_calls(monkeypatch)
    out = method.training_step(model, *crop_batch(), 0)
    assert model.groups == [2, 2, 2]  # labeled, crop 1 and crop 2 apart, as the release
    ((f1, f2, conf1, conf2, label1, label2, neg, neg_label, *_),) = calls
    # pairs: crop 1's row i is crop 2's row i - 1, same column, both valid, in the unflipped frame
    expect = {cell_id(0, s, i, j): cell_id(1, s, i - 1, j) for s in range(2) for i in range(1, CELLS)
              for j in range(CELLS) if cell_valid(1, s, j)}
    ids1, ids2 = f1.argmax(1).tolist(), f2.argmax(1).tolist()
    assert dict(zip(ids1, ids2, strict=True)) == expect and len(ids1) == len(expect) == 21

    def decode(cid):
        crop, rest = divmod(cid, 2 * CELLS * CELLS)
        s, rest = divmod(rest, CELLS * CELLS)
        return crop, s, *divmod(rest, CELLS)

    def conf_label(cid):
        crop, s, i, j = decode(cid)
        return model.pseudo[crop][s, :, i, j].softmax(0).max(0)

    # each pixel's confidence and pseudo label come from its own cell, in each crop
    for k, (a, b) in enumerate(zip(ids1, ids2, strict=True)):
        for (c, y), cid in (((conf1[k], label1[k]), a), ((conf2[k], label2[k]), b)):
            want_c, want_y = conf_label(cid)
            assert float(c) == pytest.approx(float(want_c)) and int(y) == int(want_y)
    # negatives: every valid cell of both crops once (no padding), each with its own cell's label
    neg_ids = neg.argmax(1).tolist()
    assert sorted(neg_ids) == sorted(cell_id(c, s, i, j) for c in (0, 1) for s in range(2)
                                     for i in range(CELLS) for j in range(CELLS) if cell_valid(c, s, j))
    assert neg_label.tolist() == [int(conf_label(cid)[1]) for cid in neg_ids]
    # the gradient reaches only the less confident cell of a pair, where the other is confident
    anchors1 = {a for k, (a, b) in enumerate(zip(ids1, ids2, strict=True))
                if conf2[k] > 0.5 and conf1[k] < conf2[k]}
    anchors2 = {b for k, (a, b) in enumerate(zip(ids1, ids2, strict=True))
                if conf1[k] > 0.5 and conf2[k] < conf1[k]}
    assert anchors1 and anchors2
    out["loss"].backward()
    for crop, anchors in ((0, anchors1), (1, anchors2)):
        grad = model.proj[crop].grad.abs().sum(1)  # (2, 4, 4): per cell, true frame
        got = {cell_id(crop, s, i, j) for s in range(2) for i in range(CELLS) for j in range(CELLS)
               if grad[s, i, j] > 0}
        assert got == anchors


def test_cac_bank_keeps_the_negatives_of_the_last_step_save_steps(digits_root, tmp_path, monkeypatch):
    method = cac_method(digits_root, tmp_path, "cac.step_save=2")
    calls = recorded_loss_calls(monkeypatch)
    for step in range(3):  # step k's embeddings have norm k + 1, so each negative tells its step
        method.training_step(written_outputs(scale=step + 1.0), *crop_batch(), step)
    fresh = 60  # valid cells of both crops
    norms = [call[6].norm(dim=1) for call in calls]
    assert [n.shape[0] for n in norms] == [fresh, 2 * fresh, 3 * fresh]
    assert torch.equal(norms[2], torch.cat([torch.full((fresh,), v) for v in (3.0, 1.0, 2.0)]))
    assert [float(f.norm(dim=1).unique()) for f, _ in method.bank] == [2.0, 3.0]
    assert torch.equal(method.bank[-1][1], calls[2][7][:fresh])  # labels stay with their features


@pytest.mark.parametrize("world, per_crop", [(1, 8), (4, 2)])
def test_cac_samples_selected_num_over_the_world_per_process(digits_root, tmp_path, monkeypatch, world,
                                                             per_crop):
    method = cac_method(digits_root, tmp_path, "cac.selected_num=8")
    method.world_size = world
    calls = recorded_loss_calls(monkeypatch)
    method.training_step(written_outputs(), *crop_batch(), 0)
    neg = calls[0][6]
    assert neg.shape[0] == 2 * per_crop and len(set(neg.argmax(1).tolist())) == 2 * per_crop
    crops = [cid // (2 * CELLS * CELLS) for cid in neg.argmax(1).tolist()]
    assert crops == [0] * per_crop + [1] * per_crop  # half from each crop
