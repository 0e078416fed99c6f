import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import digits_cfg
from seg_ssl.config import ConfigError
from seg_ssl.data.cutmix import box_masks, mix
from seg_ssl.engine.trainer import Trainer
from seg_ssl.losses.ohem import ohem_cross_entropy
from seg_ssl.methods.cps import CPS, cross_pseudo_loss


def test_cross_loss_against_hand_computed_value():
    # one image, 2 classes, 2 pixels (1 x 2)
    l1 = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]], requires_grad=True)  # argmax: [0, 1]
    l2 = torch.tensor([[[[0.0, 3.0]], [[1.0, 0.0]]]], requires_grad=True)  # argmax: [1, 0]
    loss = cross_pseudo_loss(l1, l2)

    def ce(logits, target):  # -log softmax(logits)[target]
        return -(logits[target] - math.log(sum(math.exp(v) for v in logits)))
    # branch 1 learns [1, 0] from branch 2, branch 2 learns [0, 1] from branch 1; mean over 2 pixels
    expect = (ce([2, 0], 1) + ce([0, 1], 0)) / 2 + (ce([0, 1], 0) + ce([3, 0], 1)) / 2
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    # padding and low confidence remove pixels
    valid = torch.tensor([[[True, False]]])
    only_first = cross_pseudo_loss(l1, l2, valid=valid)
    assert only_first.item() == pytest.approx(ce([2, 0], 1) + ce([0, 1], 0), rel=1e-6)
    assert cross_pseudo_loss(l1, l2, conf_thresh=0.999).item() == 0.0


def test_pseudo_labels_carry_no_gradient():
    torch.manual_seed(0)
    l1 = torch.randn(2, 4, 3, 3, requires_grad=True)
    l2 = torch.randn(2, 4, 3, 3, requires_grad=True)
    t1 = torch.randn(2, 4, 3, 3, requires_grad=True)
    t2 = torch.randn(2, 4, 3, 3, requires_grad=True)
    cross_pseudo_loss(l1, l2, t1, t2).backward()
    assert l1.grad.abs().sum() > 0 and l2.grad.abs().sum() > 0
    assert t1.grad is None and t2.grad is None
    # plain CPS: the gradient into l1 is exactly that of CE(l1, fixed argmax l2)
    a = l1.detach().clone().requires_grad_()
    cross_pseudo_loss(a, l2.detach()).backward()
    b = l1.detach().clone().requires_grad_()
    F.cross_entropy(b, l2.detach().argmax(1)).backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("boxes", [1, 3])
def test_cutmix_masks_cover_the_drawn_proportion(boxes):
    masks, props = box_masks(200, 64, 80, (0.25, 0.5), boxes, invert=False, rng=np.random.default_rng(0))
    cover = masks.mean((1, 2))
    assert ((props >= 0.25) & (props <= 0.5)).all()
    if boxes == 1:  # one box: exactly the drawn area, up to rounding of its sides
        assert (cover - props).abs().max() < 0.05
    else:  # toggled boxes can cancel where they overlap, never exceed the drawn total
        assert (cover <= props + 0.05).all() and cover.mean() > 0.6 * props.mean()
    inv, props2 = box_masks(10, 32, 32, (0.3, 0.3), 1, invert=True, rng=np.random.default_rng(1))
    assert torch.allclose(inv.mean((1, 2)), 1 - props2, atol=0.05)


def test_mix_is_consistent_for_images_and_predictions():
    masks, _ = box_masks(2, 8, 8, (0.3, 0.5), 3, rng=np.random.default_rng(2))
    a, b = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    mixed = mix(a, b, masks)
    assert torch.equal(mixed[:, 0], masks) and torch.equal(mixed[:, 2], masks)
    # mixing logits then taking argmax equals mixing the two argmax maps with the same mask
    la, lb = torch.randn(2, 5, 8, 8), torch.randn(2, 5, 8, 8)
    mixed_label = mix(la, lb, masks).argmax(1)
    expect = torch.where(masks.bool(), lb.argmax(1), la.argmax(1))
    assert torch.equal(mixed_label, expect)


def test_ohem_matches_brute_force():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5) * 3
    target = torch.randint(0, 3, (2, 5, 5))
    target[0, 0] = 255
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    prob = torch.exp(-ce)
    valid = target != 255
    for min_kept, thresh in ((5, 0.2), (30, 0.7), (1000, 0.7)):
        ps = sorted(prob[valid].tolist())
        limit = 1.0 if len(ps) <= min_kept else max(thresh, ps[min_kept - 1])
        keep = valid & (prob <= limit)
        expect = ce[keep].mean()
        got = ohem_cross_entropy(logits, target, thresh, min_kept)
        torch.testing.assert_close(got, expect)
        assert int(keep.sum()) >= min(min_kept, int(valid.sum()))


def test_branches_start_different(digits_root, tmp_path):
    cfg = digits_cfg(digits_root, str(tmp_path), "method=cps")
    m = CPS(cfg).model
    p1 = dict(m.branch1.named_parameters())
    p2 = dict(m.branch2.named_parameters())
    assert p1.keys() == p2.keys()
    assert not torch.equal(p1["classifier.1.weight"], p2["classifier.1.weight"])
    decoder = [k for k in p1 if k.startswith("decoder.") and k.endswith("weight") and p1[k].dim() == 4]
    assert decoder and all(not torch.equal(p1[k], p2[k]) for k in decoder)


@pytest.mark.parametrize("cutmix", ["true", "false"])
def test_a_few_cps_iterations_lower_the_loss(digits_root, tmp_path, cutmix):
    cfg = digits_cfg(digits_root, str(tmp_path / cutmix), "method=cps", f"cps.cutmix={cutmix}",
                     "cps.weight=1.0", "train.iters=16", "train.lr=0.002", "data.batch_size=4",
                     "data.unlabeled_batch_size=4")
    trainer = Trainer(cfg)
    logs = []
    original = trainer.step

    def record(labeled, unlabeled):
        out = original(labeled, unlabeled)
        logs.append({k: float(v) for k, v in out.items()})
        return out

    trainer.step = record
    res = trainer.train()
    first = np.mean([l["sup1"] + l["sup2"] for l in logs[:4]])
    last = np.mean([l["sup1"] + l["sup2"] for l in logs[-4:]])
    assert last < 0.8 * first, (first, last)
    assert all(math.isfinite(l["cps"]) and l["cps"] >= 0 for l in logs)
    assert 0 <= res["mIoU"] <= 1


def test_distribution_alignment_reweights_pseudo_labels():
    # class 0 at p = 0.6 everywhere; aligning by [0.5, 1.5] makes class 1 (0.4 x 1.5) the target
    logits = torch.log(torch.tensor([0.6, 0.4])).view(1, 2, 1, 1).expand(1, 2, 2, 2).clone()
    student = torch.zeros(1, 2, 2, 2, requires_grad=True)
    plain = cross_pseudo_loss(student, student, logits, logits)
    aligned = cross_pseudo_loss(student, student, logits, logits, align=torch.tensor([0.5, 1.5]))
    assert plain.item() == pytest.approx(aligned.item())  # uniform student: same CE for any label ...
    g_plain = torch.autograd.grad(cross_pseudo_loss(student, student, logits, logits), student)[0]
    g_align = torch.autograd.grad(aligned, student)[0]
    assert (g_plain[0, 0] < 0).all() and (g_align[0, 1] < 0).all()  # ... but pulled towards class 0 / 1


def test_fg_marginal_pseudo_labels():
    # 4 classes (0 = background), 3 pixels. Teacher probabilities per pixel:
    #   a: bg 0.4, fg spread 0.2 / 0.2 / 0.2: argmax says bg (conf 0.4); the foreground marginal (0.6)
    #      says fg, the likeliest foreground class being the first of the ties, 1 (conf 0.6)
    #   b: bg 0.7: background under both rules (conf 0.7)
    #   c: bg 0.1, class 3 0.6: class 3 under both rules (conf 0.6 plain, p(3 | fg) = 0.6 / 0.9
    #      with fg_marginal, where a's is 0.2 / 0.6)
    probs = torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.1, 0.6]])
    teacher = probs.log().T.reshape(1, 4, 1, 3)

    def certain_of(k):  # a student certain of class k everywhere: CE 40 where the label is not k, ~0 where it is
        s = torch.full((1, 4, 1, 3), -20.0)
        s[:, k] = 20.0
        return s

    def loss(k, **kw):  # one branch's mean CE over the kept pixels (both branches see the same here)
        return cross_pseudo_loss(certain_of(k), certain_of(k), teacher, teacher, **kw).item() / 2

    # labels: plain [0, 0, 3], fg_marginal [1, 0, 3]
    assert loss(1) == pytest.approx(40.0, rel=1e-4)
    assert loss(1, fg_marginal=True) == pytest.approx(40 * 2 / 3, rel=1e-4)
    assert loss(0, fg_marginal=True) == pytest.approx(40 * 2 / 3, rel=1e-4)
    assert loss(0) == pytest.approx(40 * 1 / 3, rel=1e-4)
    # threshold 0.65: plain keeps b only; fg_marginal keeps b and c (0.667) and drops a (0.333)
    assert loss(3, conf_thresh=0.65) == pytest.approx(40.0, rel=1e-4)
    assert loss(3, conf_thresh=0.65, fg_marginal=True) == pytest.approx(20.0, rel=1e-4)
    # threshold 0.7: c's class is no longer certain enough, b (0.7) alone stays
    assert loss(3, conf_thresh=0.7, fg_marginal=True) == pytest.approx(40.0, rel=1e-4)
    assert loss(0, conf_thresh=0.7, fg_marginal=True) == pytest.approx(0.0, abs=1e-4)


def test_fg_marginal_refuses_a_dataset_without_background(digits_root, tmp_path):
    names = "[road," + ",".join(f"c{i}" for i in range(1, 11)) + "]"
    cfg = digits_cfg(digits_root, str(tmp_path), "method=cps", "cps.fg_marginal=true", f"data.class_names={names}")
    with pytest.raises(ConfigError, match=r"cps.fg_marginal needs class 0 to be background; .*'road'"):
        CPS(cfg)
    cfg = digits_cfg(digits_root, str(tmp_path), "method=cps", "cps.fg_marginal=true")  # digits: class 0 is background
    assert CPS(cfg).c.fg_marginal


def test_short_cps_run_on_digits_predicts_more_than_background(digits_root, tmp_path):
    """The failure this guards against: both branches agree on background and push each other into
    it until every pixel is background (the all-background floor). digits_cps.yaml's setting
    (labeled-only warm-up, fg_marginal pseudo labels) keeps predicting digits once CPS is on."""
    cfg = digits_cfg(digits_root, str(tmp_path), "train.iters=60", "train.lr=0.003", "cps.unsup_start_iter=30",
                     "cps.rampup_iters=10", config="digits_cps.yaml")
    trainer = Trainer(cfg)
    shares = []
    original = trainer.step

    def record(labeled, unlabeled):
        out = original(labeled, unlabeled)
        if "pseudo_bg" in out:
            shares.append(float(out["pseudo_bg"]))
        return out

    trainer.step = record
    res = trainer.train()
    assert len(shares) == 30  # CPS ran for the last 30 iterations
    # the val labels' own background share is the all-background floor's only non-zero IoU
    labels = torch.cat([torch.as_tensor(trainer.val[i]["label"]).flatten() for i in range(len(trainer.val))])
    labels = labels[labels != 255]
    floor = float((labels == 0).float().mean()) / cfg.data.num_classes
    digit_iou = [v for v in res["IoU"][1:] if v == v]
    assert res["mIoU"] > floor + 0.02, (res["mIoU"], floor)
    assert sum(v > 0.02 for v in digit_iou) >= 3, digit_iou
    assert max(shares[-10:]) < 0.95, shares  # pseudo labels are not all background
