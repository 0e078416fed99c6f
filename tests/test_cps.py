import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SMALL_NET, digits_cfg
from helpers import record_steps
from reference_ssl import brute_force_miou
from seg_ssl.config import ConfigError
from seg_ssl.data.cutmix import box_masks, mix
from seg_ssl.engine.trainer import Trainer
from seg_ssl.losses.ohem import ohem_cross_entropy
from seg_ssl.losses.pseudo_labels import pseudo_label_stats
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
    masks, props = box_masks(200, 64, 80, (0.25, 0.5), boxes, invert=True, rng=np.random.default_rng(0))
    cover = masks.mean((1, 2))
    assert ((props >= 0.25) & (props <= 0.5)).all()
    if boxes == 1:  # one box: exactly the drawn area, up to rounding of its sides
        assert (cover - props).abs().max() < 0.05
    else:  # toggled boxes cancel where they overlap, never exceed the drawn total
        assert (cover <= props + 0.05).all() and cover.mean() > 0.6 * props.mean()
    # invert=False (not the release's setting) starts from ones: the boxes are the zeros
    ones, props2 = box_masks(10, 32, 32, (0.3, 0.3), 1, invert=False, rng=np.random.default_rng(1))
    assert torch.allclose(ones.mean((1, 2)), 1 - props2, atol=0.05)


def test_cutmix_masks_have_the_release_generators_statistics():
    """The CPS release's generator (3 boxes, proportion range [0.25, 0.5], measured on 6,000 masks):
    box-area fraction mean 0.251, std 0.069, 99th percentile 0.409; a vertical run of box pixels
    longer than 0.6 of the image in 0.9% of masks (no side exceeds sqrt(1/3) = 0.577)."""
    masks, _ = box_masks(2000, 64, 64, (0.25, 0.5), 3, invert=True, rng=np.random.default_rng(0))
    area = masks.mean((1, 2)).numpy()
    assert abs(area.mean() - 0.251) < 0.01 and abs(area.std() - 0.069) < 0.01
    assert abs(np.percentile(area, 99) - 0.409) < 0.03
    run = np.zeros((2000, 64), int)
    longest = np.zeros(2000, int)
    for row in masks.numpy().transpose(1, 0, 2):  # rows top to bottom: (masks, columns)
        run = np.where(row > 0, run + 1, 0)
        longest = np.maximum(longest, run.max(1))
    assert (longest > 0.6 * 64).mean() < 0.03  # 32.5% with one proportion per mask and no side cap


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
    m = CPS(cfg).build_model()
    p1 = dict(m.branch1.named_parameters())
    p2 = dict(m.branch2.named_parameters())
    assert p1.keys() == p2.keys()
    assert not torch.equal(p1["classifier.1.weight"], p2["classifier.1.weight"])
    decoder = [k for k in p1 if k.startswith("decoder.") and k.endswith("weight") and p1[k].dim() == 4]
    assert decoder and all(not torch.equal(p1[k], p2[k]) for k in decoder)


@pytest.mark.parametrize("cutmix", ["true", "false"])
def test_cps_iterations_add_the_cross_term_and_score_branch_1(digits_root, tmp_path, cutmix):
    # (whether a briefly trained model's loss falls depends on the CPU's rounding: not asserted)
    cfg = digits_cfg(digits_root, str(tmp_path / cutmix), "method=cps", f"cps.cutmix={cutmix}",
                     "cps.weight=1.0", "train.iters=3", "train.lr=0.002", "data.batch_size=4",
                     "data.unlabeled_batch_size=4", *SMALL_NET)
    trainer = Trainer(cfg)
    logs = record_steps(trainer)
    res = trainer.train()
    assert len(logs) == 3 and all(log["cps"] > 0 for log in logs)
    # warm-up (unsup_start_iter 0) is off: every step has the cross term; the loss adds it at weight 1
    assert all(log["loss"] == pytest.approx(log["sup1"] + log["sup2"] + log["cps"], rel=1e-5) for log in logs)
    # the final score is branch 1's (eval.branch 1), counted pixel by pixel
    trainer.model.eval()
    assert res.metrics["mIoU"] == pytest.approx(brute_force_miou(trainer.model.branch1, trainer.val, 11,
                                                                 batch_size=8),
                                        abs=1e-12)


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


def test_fg_marginal_calls_a_pixel_foreground_where_the_foreground_mass_wins():
    # 4 classes (0 = background), 3 pixels. Teacher probabilities per pixel:
    #   a: bg 0.4, fg spread 0.2 / 0.2 / 0.2: argmax says bg (conf 0.4); the foreground marginal (0.6)
    #      says fg, the likeliest foreground class being the first of the ties, 1 (conf 0.6)
    #   b: bg 0.7: background under both rules (conf 0.7)
    #   c: bg 0.1, class 3 0.6: class 3 under both rules (conf 0.6 plain, p(3 | fg) = 0.6 / 0.9
    #      with fg_marginal, where a's is 0.2 / 0.6)
    probs = torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.1, 0.6]])
    teacher = probs.log().T.reshape(1, 4, 1, 3)

    def certain_of(k):
        # a student certain of class k everywhere: CE 40 where the label is not k, ~0 where it is
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
    cfg = digits_cfg(digits_root, str(tmp_path), "method=cps", "cps.fg_marginal=true",
                     f"data.class_names={names}")
    with pytest.raises(ConfigError, match=r"cps.fg_marginal needs class 0 to be background; .*'road'"):
        CPS(cfg)
    # digits: class 0 is background
    cfg = digits_cfg(digits_root, str(tmp_path), "method=cps", "cps.fg_marginal=true")
    assert CPS(cfg).c.fg_marginal


def test_pseudo_label_stats_count_the_kept_labels():
    targets = torch.tensor([[[0, 0, 3, 255], [0, 5, 255, 255]]])  # 5 kept labels: three 0, one 3, one 5
    valid = torch.tensor([[[True, True, True, True], [True, True, True, False]]])  # 7 valid pixels
    st = pseudo_label_stats(targets, valid, num_classes=11)
    assert float(st["pseudo_bg"]) == pytest.approx(3 / 5) and st["pseudo_kept"] == pytest.approx(5 / 7)
    assert [float(st[f"pseudo_cls/{k}"]) for k in range(11)] == pytest.approx(
        [3 / 5, 0, 0, 1 / 5, 0, 1 / 5, 0, 0, 0, 0, 0])


# ---- the wiring of CPS's training step, on two 1x1-conv "networks" ------------------------------
# A 1x1 conv is pixelwise, so mixing its outputs equals running it on the mixed image: the targets
# of the CutMix term are argmax of the *other* branch on the mixed image, which the tests compute
# by hand from the mask the step drew.

def conv_branches(k=4, seed=0):
    from seg_ssl.methods.cps import TwoBranch
    torch.manual_seed(seed)
    return TwoBranch(torch.nn.Conv2d(3, k, 1), torch.nn.Conv2d(3, k, 1))


def cps_method(digits_root, tmp_path, *extra):
    cfg = digits_cfg(digits_root, str(tmp_path), "method=cps", "cps.weight=1.0", "cps.unsup_start_iter=0",
                     "cps.rampup_iters=0", "data.num_classes=4", "data.class_names=null", *extra)
    return CPS(cfg)


def cps_batch(nl=2, nu=4, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    labeled = {"image": torch.randn(nl, 3, size, size, generator=g),
               "label": torch.randint(0, 4, (nl, size, size), generator=g),
               "valid": torch.ones(nl, size, size, dtype=torch.bool)}
    labeled["label"][0, 0] = 255  # an ignored row (an object border): not padding
    labeled["valid"][1, -1] = False  # the last row of labeled image 1 is padding
    labeled["label"][1, -1] = 255
    valid = torch.ones(nu, size, size, dtype=torch.bool)
    valid[-1, :, size // 2:] = False  # the last unlabeled image is half padding
    unlabeled = {"image": torch.randn(nu, 3, size, size, generator=g), "valid": valid}
    return labeled, unlabeled


def ce_on(logits, target, valid):
    return F.cross_entropy(logits, target.masked_fill(~valid, 255), ignore_index=255)


def test_cutmix_step_mixes_one_mask_into_images_targets_and_validity(digits_root, tmp_path, monkeypatch):
    import seg_ssl.methods.cps as cps_module
    method = cps_method(digits_root, tmp_path, "cps.cutmix=true")
    model = conv_branches()
    labeled, unlabeled = cps_batch()
    drawn, seen, grouped = [], [], []
    real_box_masks = cps_module.box_masks

    def recording_box_masks(*args, **kwargs):
        drawn.append(real_box_masks(*args, **kwargs))
        return drawn[-1]

    def recording_model(x, groups=None):
        seen.append(x.detach().clone())
        grouped.append(groups)
        return model(x, groups=groups)

    monkeypatch.setattr(cps_module, "box_masks", recording_box_masks)
    truth = torch.randint(0, 11, unlabeled["valid"].shape, generator=torch.Generator().manual_seed(0))
    unlabeled["label"] = truth  # hidden truth (data.unlabeled_truth): logged, never learnt from
    out = method.training_step(recording_model, labeled, unlabeled, 0)
    (masks, _), = drawn
    x_u, v_u = unlabeled["image"], unlabeled["valid"]
    u0, u1, v0, v1 = x_u[:2], x_u[2:], v_u[:2], v_u[2:]
    x_mix = mix(u0, u1, masks)
    # teacher pass on the two unmixed halves, then one student pass on labeled + mixed images
    assert len(seen) == 2 and torch.equal(seen[0], x_u)
    assert grouped == [[2, 2], [2, 2]]  # as the release: each half, and labeled and mixed, apart
    assert torch.equal(seen[1][:2], labeled["image"]) and torch.allclose(seen[1][2:], x_mix)
    assert 0 < masks.mean() < 1 and not torch.equal(u0, u1)  # two different images are mixed
    with torch.no_grad():
        s1, s2 = model.branch1(x_mix), model.branch2(x_mix)
    valid = (v0 & ~masks.bool()) | (v1 & masks.bool())  # padding of the pasted image stays padding
    assert not valid.all()
    # branch 1 learns branch 2's argmax on the mixed image, and the reverse; never its own
    expect = ce_on(s1, s2.argmax(1), valid) + ce_on(s2, s1.argmax(1), valid)
    own = ce_on(s1, s1.argmax(1), valid) + ce_on(s2, s2.argmax(1), valid)
    assert float(out["cps"]) == pytest.approx(float(expect), rel=1e-5)
    assert abs(float(expect) - float(own)) > 0.1
    # pseudo-label accuracy: both branches' labels against the truth mixed with the same mask
    mixed_truth = torch.where(masks.bool(), truth[2:], truth[:2])
    right = (s2.argmax(1) == mixed_truth)[valid].sum() + (s1.argmax(1) == mixed_truth)[valid].sum()
    assert float(out["pl_acc"]) == pytest.approx(float(right) / (2 * float(valid.sum())))
    with torch.no_grad():
        sup = F.cross_entropy(model.branch1(labeled["image"]), labeled["label"], ignore_index=255) + \
            F.cross_entropy(model.branch2(labeled["image"]), labeled["label"], ignore_index=255)
    assert float((out["sup1"] + out["sup2"]).detach()) == pytest.approx(float(sup), rel=1e-5)


def test_labeled_images_never_enter_the_cutmix_term_and_ohem_only_the_supervised_one(digits_root, tmp_path,
                                                                                       monkeypatch):
    import seg_ssl.methods.base as base_module  # the supervised loss of every semi-supervised method
    method = cps_method(digits_root, tmp_path, "cps.cutmix=true", "train.ohem=true", "train.ohem_min_kept=10")
    model = conv_branches()
    labeled, unlabeled = cps_batch()
    labeled["image"].requires_grad_()
    calls = []
    real_ohem = base_module.ohem_cross_entropy

    def recording_ohem(logits, target, thresh, min_kept, ignore_index):
        calls.append((logits.shape, target, min_kept))
        return real_ohem(logits, target, thresh, min_kept, ignore_index)

    monkeypatch.setattr(base_module, "ohem_cross_entropy", recording_ohem)
    out = method.training_step(model, labeled, unlabeled, 0)
    # OHEM scores each branch's labeled logits against the labels, and nothing else; min_kept is
    # per image (the release keeps 50,000 x its per-GPU batch)
    assert [shape for shape, _, _ in calls] == [(2, 4, 8, 8), (2, 4, 8, 8)]
    assert all(torch.equal(target, labeled["label"]) for _, target, _ in calls)
    assert [min_kept for _, _, min_kept in calls] == [20, 20]
    # the unsupervised part of the loss has no gradient into the labeled images
    unsup_part = out["loss"] - out["sup1"] - out["sup2"]
    assert float(unsup_part.detach()) == pytest.approx(float(out["cps"]), rel=1e-5) and float(out["cps"]) > 0
    (grad,) = torch.autograd.grad(unsup_part, labeled["image"], allow_unused=True)
    assert grad is None or not grad.any()


def test_plain_cps_step_crosses_the_branches_on_labeled_and_unlabeled_images(digits_root, tmp_path):
    method = cps_method(digits_root, tmp_path, "cps.cutmix=false")
    model = conv_branches(seed=3)
    labeled, unlabeled = cps_batch(nu=2)
    out = method.training_step(model, labeled, unlabeled, 0)
    x = torch.cat([labeled["image"], unlabeled["image"]])
    # ignored label pixels get pseudo labels, padding not
    valid = torch.cat([labeled["valid"], unlabeled["valid"]])
    with torch.no_grad():
        s1, s2 = model.branch1(x), model.branch2(x)
    expect = ce_on(s1, s2.argmax(1), valid) + ce_on(s2, s1.argmax(1), valid)
    assert float(out["cps"]) == pytest.approx(float(expect), rel=1e-5)
    dropped = valid & torch.cat([labeled["label"] != 255, unlabeled["valid"]])  # without the border row
    assert float(out["cps"]) != pytest.approx(float(ce_on(s1, s2.argmax(1), dropped)
                                                    + ce_on(s2, s1.argmax(1), dropped)), rel=1e-5)


def test_cutmix_draws_twice_the_unlabeled_batch_of_distinct_images(digits_root, tmp_path):
    cfg = digits_cfg(digits_root, str(tmp_path), "method=cps", "cps.cutmix=true",
                     "data.unlabeled_batch_size=4")
    trainer = Trainer(cfg)
    _, unl = trainer.batch_streams()
    for _ in range(3):
        index = next(unl)["index"]
        assert len(index) == 8 and len(set(index.tolist())) == 8  # u0[i] and u1[i] are different images


@pytest.mark.parametrize("start, ramp, weights", [
    (0, 0, {0: 1.0, 5: 1.0}),
    (10, 0, {0: 0.0, 9: 0.0, 10: 1.0, 11: 1.0}),
    (10, 4, {9: 0.0, 10: 0.25, 11: 0.5, 13: 1.0, 100: 1.0}),
])
def test_warmup_and_ramp_weights_of_both_methods(digits_root, tmp_path, start, ramp, weights):
    from seg_ssl.methods.base import warmup_ramp
    from seg_ssl.methods.cac import CAC
    cps = cps_method(digits_root, tmp_path, "cps.weight=1.5", f"cps.unsup_start_iter={start}",
                     f"cps.rampup_iters={ramp}")
    cac = CAC(digits_cfg(digits_root, str(tmp_path), "method=cac", "cac.weight_unsup=0.1",
                         f"cac.unsup_start_iter={start}", f"cac.rampup_iters={ramp}"))
    for it, w in weights.items():
        assert warmup_ramp(it, start, ramp) == pytest.approx(w)
        assert cps.weight(it) == pytest.approx(1.5 * w) and cac.weight(it) == pytest.approx(0.1 * w)


@pytest.mark.parametrize("branch", ["1", "2", "ensemble"])
def test_eval_branch_picks_what_is_scored(digits_root, tmp_path, branch):
    from seg_ssl.methods.cps import TwoBranch

    class Constant(torch.nn.Module):
        def __init__(self, probs):
            super().__init__()
            self.logits = torch.log(torch.tensor(probs)).view(1, -1, 1, 1)

        def forward(self, x):
            return self.logits.expand(x.shape[0], -1, *x.shape[-2:])

    method = cps_method(digits_root, tmp_path, f"cps.eval_branch={branch}")
    model = TwoBranch(Constant([0.7, 0.1, 0.1, 0.1]), Constant([0.1, 0.1, 0.2, 0.6]))
    probs = method.predictor(model)(torch.zeros(2, 3, 4, 4)).softmax(1)[0, :, 0, 0]
    expect = {"1": [0.7, 0.1, 0.1, 0.1], "2": [0.1, 0.1, 0.2, 0.6],
              "ensemble": [0.4, 0.1, 0.15, 0.35]}[branch]
    assert probs.tolist() == pytest.approx(expect, abs=1e-6)
