"""UniMatch V2 (seg_ssl/methods/unimatch_v2.py) against its release's ``unimatch_v2.py``: the EMA
teacher's update, complementary dropout's masks, one step recomputed the release's way, and runs
through the trainer and the tools with the EMA evaluated."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import SMALL_NET, digits_cfg
from helpers import cli
from reference_ssl import ToyNet, brute_force_miou, toy_batches
from seg_ssl.config import ConfigError
from seg_ssl.data.cutmix import single_box_masks
from seg_ssl.engine.checkpoint import load_checkpoint
from seg_ssl.engine.trainer import Trainer
from seg_ssl.methods.fixmatch import FixMatch
from seg_ssl.methods.unimatch_v2 import UniMatchV2, complementary_masks
from seg_ssl.models.ema import ema_momentum, make_teacher, update_teacher


def test_the_ema_follows_the_release_schedule_at_iterations_0_1_248_249_and_1000():
    """r = min(1 - 1/(it+1), 0.996): the teacher copies the student after step 0, averages at step 1,
    and keeps 0.996 of itself from step 249 on (1 - 1/250 = 0.996)."""
    assert [ema_momentum(it) for it in (0, 1, 248, 249, 1000)] == [0.0, 0.5, 1 - 1 / 249, 0.996, 0.996]
    student = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    teacher = make_teacher(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    def set_student(w, mean):
        student[0].weight.data.fill_(w)
        student[1].running_mean.fill_(mean)

    # hand-computed: teacher = teacher * r + student * (1 - r), weights and running means alike
    set_student(3.0, 30.0)
    update_teacher(teacher, student, ema_momentum(0))
    assert teacher[0].weight.item() == 3.0 and teacher[1].running_mean.item() == 30.0
    set_student(5.0, 50.0)
    update_teacher(teacher, student, ema_momentum(1))
    assert teacher[0].weight.item() == 4.0 and teacher[1].running_mean.item() == 40.0
    set_student(10.0, 100.0)
    update_teacher(teacher, student, ema_momentum(248))
    assert teacher[0].weight.item() == pytest.approx(4.0 * 248 / 249 + 10.0 / 249, rel=1e-6)
    assert teacher[1].running_mean.item() == pytest.approx(40.0 * 248 / 249 + 100.0 / 249, rel=1e-6)
    for it in (249, 1000):
        before = teacher[0].weight.item()
        update_teacher(teacher, student, ema_momentum(it))
        assert teacher[0].weight.item() == pytest.approx(before * 0.996 + 10.0 * 0.004, rel=1e-6)
    assert teacher[1].num_batches_tracked.dtype == torch.long  # an integer buffer stays one


def test_complementary_masks_pair_each_channel_once_and_keep_half_the_pairs_clean():
    rng = np.random.default_rng(0)
    first, second = complementary_masks(7, [16, 5], 0.5, rng)
    for m in (first, second):
        assert m.shape in ((14, 16), (14, 5)) and set(m.unique().tolist()) <= {0.0, 1.0, 2.0}
        a, b = m[:7], m[7:]
        clean = (a == 1).all(1)
        assert int(clean.sum()) == 3 and torch.equal(clean, (b == 1).all(1))  # int(7 x 0.5) pairs kept
        assert torch.equal(a[~clean] + b[~clean], torch.full_like(a[~clean], 2.0))  # exact complements
        assert set(a[~clean].unique().tolist()) == {0.0, 2.0}
    # a kept pair is clean at every level
    assert torch.equal((first[:7] == 1).all(1), (second[:7] == 1).all(1))
    one = complementary_masks(1, [8], 0.5, np.random.default_rng(1))[0]  # int(0.5) = 0: no clean pair
    assert torch.equal(one[0] + one[1], torch.full((8,), 2.0))


def toy_v2(tmp_path, *extra):
    """UniMatch V2 with a box in every strong view, its generator seeded with 5, a teacher unlike
    the student (so the test can tell whose predictions give the targets)."""
    method = UniMatchV2(digits_cfg("unused", str(tmp_path), "method=unimatch_v2", "unimatch_v2.cutmix_p=1.0",
                                   "seed=5", *extra))
    student = ToyNet()
    method.setup(student)
    with torch.no_grad():
        method.teacher.conv.weight.add_(0.3)
    return method, student


def release_step(student, teacher, labeled, unl, box1, box2, mask, thresh):
    """The release's step (unimatch_v2.py), written out: the teacher's weak predictions, in-batch
    CutMix with the batch flipped, the labeled forward alone, both strong views in one forward with
    the dropout masks on the features, and (x + (s1 + s2) / 2) / 2."""
    with torch.no_grad():
        pred_w = teacher.conv(unl["image"])
        conf_w, mask_w = pred_w.softmax(1).max(1)
    ignore = torch.where(unl["valid"], 0, 255)
    s1, s2 = unl["strong1"].clone(), unl["strong2"].clone()
    in1, in2 = box1.unsqueeze(1).expand(s1.shape) == 1, box2.unsqueeze(1).expand(s2.shape) == 1
    s1[in1] = unl["strong1"].flip(0)[in1]
    s2[in2] = unl["strong2"].flip(0)[in2]
    pred_x = student.conv(labeled["image"])
    pred_s1, pred_s2 = student.conv(torch.cat([s1, s2]) * mask.unsqueeze(-1).unsqueeze(-1)).chunk(2)
    losses = []
    for pred, box in ((pred_s1, box1), (pred_s2, box2)):
        t, c, ig = mask_w.clone(), conf_w.clone(), ignore.clone()
        inside = box == 1
        t[inside], c[inside], ig[inside] = (mask_w.flip(0)[inside], conf_w.flip(0)[inside],
                                            ignore.flip(0)[inside])
        u = F.cross_entropy(pred, t, reduction="none") * ((c >= thresh) & (ig != 255))
        losses.append(u.sum() / (ig != 255).sum().item())
    loss_x = F.cross_entropy(pred_x, labeled["label"], ignore_index=255)
    return {"sup": loss_x, "strong1": losses[0], "strong2": losses[1],
            "loss": (loss_x + (losses[0] + losses[1]) / 2) / 2}


@pytest.mark.parametrize("joint_forward", [False, True])
def test_the_step_equals_the_releases_on_the_same_batch_boxes_and_masks(tmp_path, joint_forward):
    method, student = toy_v2(tmp_path, "unimatch_v2.conf_thresh=0.5",
                             f"train.joint_forward={str(joint_forward).lower()}")
    labeled, unl = toy_batches(nu=2)  # 4 unlabeled images: in-batch CutMix pairs 0-3 and 1-2
    nu, (h, w) = 4, unl["image"].shape[-2:]
    out = method.training_step(student, labeled, unl, iteration=0)
    rng = np.random.default_rng(5)  # the boxes and masks the step drew, drawn again from the same state
    box1, box2 = (single_box_masks(nu, h, w, 1.0, (0.02, 0.4), (0.3, 1 / 0.3), rng) for _ in range(2))
    mask = complementary_masks(nu, [3], 0.5, rng)[0]
    assert box1.sum() > 0 and not box1.all() and set(mask.unique().tolist()) == {0.0, 1.0, 2.0}
    expected = release_step(student, method.teacher, labeled, unl, box1, box2, mask, 0.5)
    for key in ("sup", "strong1", "strong2", "loss"):
        assert out[key].item() == pytest.approx(expected[key].item(), rel=1e-6), key
    assert expected["strong1"] > 0 and expected["strong2"] > 0
    # the teacher's forward is not the student's: the student ran on the labeled rows and the views only
    assert [c[1] for c in student.calls] == ([2 + 2 * nu] if joint_forward else [2, 2 * nu])
    out["loss"].backward()
    assert student.conv.weight.grad.abs().sum() > 0 and method.teacher.conv.weight.grad is None


def test_warm_up_is_the_labeled_term_on_the_same_scale(tmp_path):
    method, student = toy_v2(tmp_path, "unimatch_v2.unsup_start_iter=3")
    labeled, unl = toy_batches()
    out = method.training_step(student, labeled, unl, iteration=2)
    assert set(out) == {"loss", "sup"} and out["loss"].item() == pytest.approx(out["sup"].item() / 2)


def test_eval_model_ema_needs_an_ema_and_any_method_can_keep_one(tmp_path):
    with pytest.raises(ConfigError,
                       match="eval.model = ema, but method fixmatch keeps no EMA of its weights: "
                             "set train.ema=true"):
        FixMatch(digits_cfg("unused", str(tmp_path), "method=fixmatch", "eval.model=ema"))
    method = FixMatch(digits_cfg("unused", str(tmp_path), "method=fixmatch", "eval.model=ema",
                                 "train.ema=true"))
    student = ToyNet()
    method.setup(student)
    with torch.no_grad():
        student.conv.weight.add_(1.0)
    method.after_step(student, 0)  # r = 0: the teacher copies the student
    assert torch.equal(method.teacher.conv.weight, student.conv.weight)
    assert method.evaluated(student) is method.teacher and "ema" in method.state_dict()


def test_a_run_evaluates_its_ema_and_the_tools_score_it_as_the_trainer_did(digits_root, tmp_path):
    """eval.model=ema: the scored network is the teacher (the brute-force count of its predictions),
    metrics.json says so, latest.pth holds its weights, and tools/eval.py scores the same number
    from the checkpoint (and the student's, with eval.model=student, differs)."""
    work = tmp_path / "w"
    trainer = Trainer(digits_cfg(digits_root, str(work), "method=unimatch_v2", "train.iters=3",
                                 "unimatch_v2.conf_thresh=0.0", "data.batch_size=4",
                                 "data.unlabeled_batch_size=4", "train.ema_momentum=0.5", "eval.model=ema",
                                 *SMALL_NET))
    res = trainer.train()
    trainer.close()
    teacher = trainer.method.teacher.eval()
    assert res.metrics["mIoU"] == pytest.approx(brute_force_miou(teacher, trainer.val, 11, batch_size=8),
                                                abs=1e-12)
    metrics = json.loads((work / "metrics.json").read_text())
    last = json.loads((work / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["model"] == "ema" and last["model"] == "ema"
    ckpt = load_checkpoint(str(work / "latest.pth"))
    ema = ckpt["method"]["ema"]
    assert all(torch.equal(ema[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(ema[k], ckpt["model"][k]) for k in ema if ema[k].is_floating_point())
    scored = {}
    for which in ("ema", "student"):
        out = tmp_path / f"{which}.json"
        r = cli("eval", work / "latest.pth", f"eval.model={which}", "--out", out)
        assert r.returncode == 0, r.stderr
        scored[which] = json.loads(out.read_text())["mIoU"]
    assert scored["ema"] == pytest.approx(metrics["mIoU"], abs=1e-12) and scored["student"] != scored["ema"]
    weights = tmp_path / "weights.pth"  # a weights-only copy keeps the teacher for eval.model=ema
    assert cli("export", work / "latest.pth", "--weights-only", "--out", weights).returncode == 0
    assert os.path.isfile(weights) and "ema" in load_checkpoint(str(weights))["method"]
