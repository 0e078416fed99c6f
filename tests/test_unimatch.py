import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import digits_cfg
from reference_ssl import ToyNet, ce_terms, hard_targets, log_softmax_at, toy_batches
from seg_ssl.config import ConfigError
from seg_ssl.data.cutmix import single_box_masks
from seg_ssl.data.transforms import WeakStrongPipeline, photometric_ops
from seg_ssl.losses.pseudo_labels import box_mixed_targets, pseudo_label_accuracy, weak_to_strong_loss
from seg_ssl.methods.unimatch import UniMatch
from seg_ssl.models.segmentor import Segmentor, logits_and_perturbed


def test_weak_to_strong_loss_divides_the_kept_pixels_ce_by_all_valid_pixels():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 2], [1, 1]]])
    conf = torch.tensor([[[0.99, 0.50], [0.96, 0.97]]])
    valid = torch.tensor([[[True, True], [True, False]]])  # (1, 1) is padding
    # kept: (0, 0) and (1, 0); (0, 1) is under the threshold, (1, 1) is padding: 3 valid pixels
    expected = -(log_softmax_at(logits, 0, 0, 0, 0) + log_softmax_at(logits, 0, 1, 1, 0)) / 3
    assert weak_to_strong_loss(logits, target, conf, valid, 0.95).item() == pytest.approx(expected, rel=1e-5)
    # threshold 0 keeps every valid pixel
    expected0 = -(log_softmax_at(logits, 0, 0, 0, 0) + log_softmax_at(logits, 0, 2, 0, 1)
                  + log_softmax_at(logits, 0, 1, 1, 0)) / 3
    assert weak_to_strong_loss(logits, target, conf, valid, 0.0).item() == pytest.approx(expected0, rel=1e-5)


def test_box_mixed_targets_take_the_pasted_images_targets_inside_the_box():
    t, t_mix = torch.zeros(1, 2, 3, dtype=torch.long), torch.full((1, 2, 3), 7)
    c, c_mix = torch.full((1, 2, 3), 0.9), torch.full((1, 2, 3), 0.4)
    v = torch.ones(1, 2, 3, dtype=torch.bool)
    v_mix = torch.tensor([[[True, False, True], [True, True, True]]])
    box = torch.tensor([[[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    mt, mc, mv = box_mixed_targets(t, c, v, t_mix, c_mix, v_mix, box)
    assert mt.tolist() == [[[0, 7, 7], [0, 0, 0]]]
    assert torch.allclose(mc, torch.tensor([[[0.9, 0.4, 0.4], [0.9, 0.9, 0.9]]]))
    assert mv.tolist() == [[[True, False, True], [True, True, True]]]  # the pasted image's padding


def test_single_box_masks_draw_one_fitting_box_of_the_given_area_with_probability_p():
    rng = np.random.default_rng(0)
    masks = single_box_masks(400, 40, 60, p=0.5, size_range=(0.02, 0.4), ratio_range=(0.3, 1 / 0.3), rng=rng)
    assert masks.shape == (400, 40, 60) and set(masks.unique().tolist()) <= {0.0, 1.0}
    with_box = masks.flatten(1).sum(1) > 0
    assert 160 < int(with_box.sum()) < 240  # p = 0.5 of 400
    for m in masks[with_box]:
        rows, cols = m.sum(1).nonzero().flatten(), m.sum(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert m.sum() == h * w  # one solid rectangle
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        assert 0 < h * w <= 0.4 * 40 * 60  # sides are truncated to integers: at most the drawn area
    assert single_box_masks(5, 8, 8, p=0.0, rng=rng).sum() == 0
    assert bool((single_box_masks(50, 32, 32, p=1.0, rng=rng).flatten(1).sum(1) > 0).all())


def toy_method(tmp_path, *extra):
    """UniMatch with a box in every strong view; its box generator is seeded with 5."""
    return UniMatch(digits_cfg("unused", str(tmp_path), "method=unimatch", "unimatch.cutmix_p=1.0", "seed=5",
                               *extra))


@pytest.mark.parametrize("joint_forward,fg_marginal", [(False, False), (True, False), (False, True)])
def test_step_composes_the_loss_as_released(tmp_path, joint_forward, fg_marginal):
    method = toy_method(tmp_path, "unimatch.conf_thresh=0.5",
                        f"train.joint_forward={str(joint_forward).lower()}",
                        f"unimatch.fg_marginal={str(fg_marginal).lower()}")
    net = ToyNet()
    labeled, unl = toy_batches()
    nu, (h, w) = 2, unl["image"].shape[-2:]
    out = method.training_step(net, labeled, unl, iteration=0)
    # the boxes the step drew, drawn again from the same generator state
    rng = np.random.default_rng(5)
    box1 = single_box_masks(nu, h, w, 1.0, (0.02, 0.4), (0.3, 1 / 0.3), rng)
    box2 = single_box_masks(nu, h, w, 1.0, (0.02, 0.4), (0.3, 1 / 0.3), rng)
    assert box1.sum() > 0 and box2.sum() > 0
    with torch.no_grad():
        conv = net.conv
        p_w = conv(unl["image"][:nu]).softmax(1)
        p_mix = conv(unl["image"][nu:]).softmax(1)
        conf_w, t_w = hard_targets(p_w, fg_marginal)
        conf_m, t_m = hard_targets(p_mix, fg_marginal)
        if fg_marginal:  # the toy has pixels where the two rules differ, so the test can tell them apart
            assert bool((t_w != p_w.argmax(1)).any()) and bool((conf_w != p_w.max(1).values).any())
        expected = {}
        sup = nn.functional.cross_entropy(conv(labeled["image"]), labeled["label"], ignore_index=255).item()
        for k, box in (("strong1", box1), ("strong2", box2)):
            inside = box.bool()
            x = torch.where(inside[:, None], unl[k][nu:], unl[k][:nu])
            expected[k] = ce_terms(conv(x), torch.where(inside, t_m, t_w),
                                   torch.where(inside, conf_m, conf_w),
                                   torch.where(inside, unl["valid"][nu:], unl["valid"][:nu]), 0.5)
        fp_logits = conv(unl["image"][:nu] * torch.tensor([0.0, 2.0, 0.0]).view(1, 3, 1, 1))
        expected["fp"] = ce_terms(fp_logits, t_w, conf_w, unl["valid"][:nu], 0.5)
    assert out["sup"].item() == pytest.approx(sup, rel=1e-5)
    for k in ("strong1", "strong2", "fp"):
        assert out[k].item() == pytest.approx(expected[k], rel=1e-5), k
    total = (sup + 0.25 * expected["strong1"] + 0.25 * expected["strong2"] + 0.5 * expected["fp"]) / 2
    assert out["loss"].item() == pytest.approx(total, rel=1e-5)
    # the pasted images' targets come from the network in eval mode, without the perturbed stream
    assert net.calls[0] == ("eval", nu, 0.0) and net.training
    kept = (conf_w >= 0.5) & unl["valid"][:nu]
    assert out["pseudo_kept"] == pytest.approx(float(kept.sum()) / float(unl["valid"][:nu].sum()))


def test_fg_marginal_refuses_a_dataset_without_background(tmp_path):
    names = "[road," + ",".join(f"c{i}" for i in range(1, 11)) + "]"
    cfg = digits_cfg("unused", str(tmp_path), "method=unimatch", "unimatch.fg_marginal=true",
                     f"data.class_names={names}")
    with pytest.raises(ConfigError, match=r"unimatch.fg_marginal needs class 0 to be background; .*'road'"):
        UniMatch(cfg)
    cfg = digits_cfg("unused", str(tmp_path), "method=unimatch", "unimatch.fg_marginal=true")
    assert UniMatch(cfg).c.fg_marginal


def test_strong_views_and_the_perturbed_stream_get_gradients_the_weak_prediction_does_not(tmp_path):
    method = toy_method(tmp_path, "unimatch.conf_thresh=0.0")
    net = ToyNet()
    labeled, unl = toy_batches()
    out = method.training_step(net, labeled, unl, iteration=0)
    out["loss"].backward()
    nl = 2
    clean, perturbed = net.last["logits"].grad, net.last["logits_fp"].grad
    assert clean[:nl].abs().sum() > 0  # the labeled rows: the supervised term
    assert torch.equal(clean[nl:], torch.zeros_like(clean[nl:]))  # the weak view teaches, never learns
    assert perturbed[nl:].abs().sum() > 0
    assert net.strong_logits.grad.abs().sum() > 0


def test_warm_up_is_the_labeled_term_on_the_same_scale(tmp_path):
    method = toy_method(tmp_path, "unimatch.unsup_start_iter=3")
    net = ToyNet()
    labeled, unl = toy_batches()
    out = method.training_step(net, labeled, unl, iteration=2)
    assert set(out) == {"loss", "sup"} and out["loss"].item() == pytest.approx(out["sup"].item() / 2)
    assert len(net.calls) == 1


def test_segmentor_feature_perturbation_keeps_the_clean_stream():
    torch.manual_seed(0)
    net = Segmentor("deeplabv3plus", "resnet18", num_classes=4, encoder_depth=4, decoder_channels=16).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = net(x)
        out = logits_and_perturbed(net, x, 0.5)
    assert torch.allclose(out["logits"], plain, atol=1e-5)  # eval mode: BatchNorm ignores the batch
    assert out["logits_fp"].shape == plain.shape
    assert not torch.allclose(out["logits_fp"], plain, atol=1e-3)  # dropout is on in eval mode too
    with torch.no_grad():
        grouped = logits_and_perturbed(net, x, 0.5, groups=[1, 1])
    assert set(grouped) == {"logits", "logits_fp"} and grouped["logits"].shape == plain.shape
    # rows: the perturbed stream of those rows alone, the same as theirs in the whole batch's (eval
    # mode, every channel dropped: no randomness left), and the clean logits of every row
    x3 = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        whole = logits_and_perturbed(net, x3, 1.0)
        part = logits_and_perturbed(net, x3, 1.0, rows=(1, 3))
    assert part["logits_fp"].shape[0] == 2 and torch.allclose(part["logits"], whole["logits"], atol=1e-5)
    assert torch.allclose(part["logits_fp"], whole["logits_fp"][1:3], atol=1e-5)
    with pytest.raises(ValueError, match="fp_rows picks rows of one batch"):
        logits_and_perturbed(net, x3, 0.5, groups=[1, 2], rows=(1, 3))


def test_aspp_rates_reach_the_decoder_and_bad_ones_are_one_line_errors():
    from seg_ssl.config import ConfigError
    net = Segmentor("deeplabv3plus", "resnet18", num_classes=4, encoder_depth=4, decoder_channels=16,
                    aspp_rates=[6, 12, 18])
    rates = sorted({m.dilation[0] for m in net.decoder.aspp.modules() if isinstance(m, nn.Conv2d)} - {1})
    assert rates == [6, 12, 18]
    with pytest.raises(ConfigError, match=r"model.aspp_rates = \[6, 12\]: expected three positive integers"):
        Segmentor("deeplabv3plus", "resnet18", num_classes=4, encoder_depth=4, aspp_rates=[6, 12])


def test_weak_and_strong_views_share_the_crop(tmp_path):
    d = digits_cfg("unused", str(tmp_path), "data.shift=0.25", "data.scale_range=[1.0,2.0]").data
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    label = rng.integers(0, 11, (64, 64), dtype=np.uint8)
    none = WeakStrongPipeline(d, [], labeled=True)(image, label, seed=3)
    assert torch.equal(none["strong1"], none["image"]) and torch.equal(none["strong2"], none["image"])
    assert not none["valid"].all()  # the shift pads: the views carry where
    pipe = WeakStrongPipeline(d, photometric_ops(1.0, 1.0, 0.0, jitter=(0.5, 0.5, 0.5, 0.25)), labeled=True)
    out = pipe(image, label, seed=3)
    assert torch.equal(out["image"], none["image"]) and torch.equal(out["valid"], none["valid"])
    assert torch.equal(out["label"], none["label"])
    for k in ("strong1", "strong2"):  # grayscale p=1: equal channels; jitter changed the values
        assert torch.allclose(out[k][0] * d.std[0] + d.mean[0], out[k][1] * d.std[1] + d.mean[1], atol=1e-5)
        assert not torch.equal(out[k], out["image"])
    assert not torch.equal(out["strong1"], out["strong2"])  # independent draws
    again = pipe(image, label, seed=3)
    assert all(torch.equal(out[k], again[k]) for k in out)


def test_pseudo_label_accuracy_counts_by_hand():
    pred = torch.tensor([[[0, 1, 2, 2], [0, 0, 1, 3]]])
    truth = torch.tensor([[[0, 1, 1, 255], [0, 2, 1, 3]]])
    valid = torch.tensor([[[True, True, True, True], [True, True, True, False]]])
    kept = torch.tensor([[[True, True, False, True], [False, True, True, True]]])
    acc = pseudo_label_accuracy(pred, truth, valid, kept)
    # known pixels: all valid with truth != 255: 6; right: (0,0) (0,1) (1,0) (1,2) = 4
    assert float(acc["pl_acc"]) == pytest.approx(4 / 6)
    # true foreground among them: (0,1) (0,2) (1,1) (1,2): right (0,1) (1,2)
    assert float(acc["pl_fg_acc"]) == pytest.approx(2 / 4)
    # kept and known: (0,0) (0,1) (1,1) (1,2): right 3
    assert float(acc["pl_kept_acc"]) == pytest.approx(3 / 4)
    assert "pl_kept_acc" not in pseudo_label_accuracy(pred, truth, valid, torch.zeros_like(kept))
