"""FixMatch (seg_ssl/methods/fixmatch.py) against the UniMatch release's fixmatch.py formula, counted
pixel by pixel, and through the trainer."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import digits_cfg
from helpers import record_steps
from reference_ssl import ToyNet, ce_terms, hard_targets, toy_batches
from seg_ssl.data.cutmix import single_box_masks
from seg_ssl.engine.trainer import Trainer
from seg_ssl.methods.fixmatch import FixMatch


def toy_method(tmp_path, *extra):
    """FixMatch with a box in every strong view; its box generator is seeded with 5."""
    return FixMatch(digits_cfg("unused", str(tmp_path), "method=fixmatch", "fixmatch.cutmix_p=1.0", "seed=5",
                               *extra))


@pytest.mark.parametrize("joint_forward,fg_marginal", [(False, False), (True, False), (False, True)])
def test_step_is_the_released_formula(tmp_path, joint_forward, fg_marginal):
    """loss = (CE(labeled) + sum over kept pixels of CE(strong, target) / valid pixels) / 2, the
    strong view mixed with the second image's strong view inside the box, whose targets, confidences
    and valid pixels are that image's weak prediction, made in eval mode."""
    method = toy_method(tmp_path, "fixmatch.conf_thresh=0.5",
                        f"train.joint_forward={str(joint_forward).lower()}",
                        f"fixmatch.fg_marginal={str(fg_marginal).lower()}")
    net = ToyNet()
    labeled, unl = toy_batches(strong=("strong", None))  # FixMatch's pipeline makes one strong view
    nu, (h, w) = 2, unl["image"].shape[-2:]
    out = method.training_step(net, labeled, unl, iteration=0)
    box = single_box_masks(nu, h, w, 1.0, (0.02, 0.4), (0.3, 1 / 0.3), np.random.default_rng(5))
    assert box.sum() > 0 and not box.all()
    with torch.no_grad():
        conv = net.conv
        conf_w, t_w = hard_targets(conv(unl["image"][:nu]).softmax(1), fg_marginal)
        conf_m, t_m = hard_targets(conv(unl["image"][nu:]).softmax(1), fg_marginal)
        inside = box.bool()
        x = torch.where(inside[:, None], unl["strong"][nu:], unl["strong"][:nu])
        strong = ce_terms(conv(x), torch.where(inside, t_m, t_w), torch.where(inside, conf_m, conf_w),
                          torch.where(inside, unl["valid"][nu:], unl["valid"][:nu]), 0.5)
        sup = nn.functional.cross_entropy(conv(labeled["image"]), labeled["label"], ignore_index=255).item()
    assert out["sup"].item() == pytest.approx(sup, rel=1e-5)
    assert out["strong"].item() == pytest.approx(strong, rel=1e-5) and strong > 0
    assert out["loss"].item() == pytest.approx((sup + strong) / 2, rel=1e-5)
    # the pasted images' targets come first, from the network in eval mode; no perturbed stream
    assert net.calls[0] == ("eval", nu, 0.0) and net.training
    assert [c[1] for c in net.calls[1:]] == ([2 + 2 * nu] if joint_forward else [2 + nu, nu])
    assert all(fp == 0.0 for _, _, fp in net.calls)
    kept = (conf_w >= 0.5) & unl["valid"][:nu]
    assert out["pseudo_kept"] == pytest.approx(float(kept.sum()) / float(unl["valid"][:nu].sum()))


def test_warm_up_is_the_labeled_term_on_the_same_scale(tmp_path):
    method = toy_method(tmp_path, "fixmatch.unsup_start_iter=10")
    net = ToyNet()
    labeled, unl = toy_batches()
    out = method.training_step(net, labeled, unl, iteration=9)
    sup = nn.functional.cross_entropy(net.conv(labeled["image"]), labeled["label"], ignore_index=255)
    assert out["loss"].item() == pytest.approx(sup.item() / 2, rel=1e-6) and len(net.calls) == 1


def test_trains_through_the_trainer_with_one_strong_view(digits_root, tmp_path):
    cfg = digits_cfg(digits_root, str(tmp_path), "method=fixmatch", "train.iters=2",
                     "fixmatch.conf_thresh=0.0", "data.batch_size=2", "data.unlabeled_batch_size=2",
                     "model.decoder_channels=16")
    trainer = Trainer(cfg)
    first = next(trainer.batch_streams()[1])
    assert "strong" in first and "strong2" not in first  # one strong view
    assert first["image"].shape[0] == first["strong"].shape[0] == 4  # drawn twice: 2 x 2 images
    logs = record_steps(trainer)
    trainer.train()
    assert len(logs) == 2 and all(np.isfinite(log["loss"]) and log["strong"] > 0 for log in logs)
