"""The shipped VOC and Cityscapes configs keep the published hyper-parameters.

Each value is written here beside the paper or release it comes from (see the reference notes), so
an edit of a config that changes a published setting fails here and has to say why. Where seg_ssl
writes a setting differently (a global selected_num, the CPS release's effective learning rate),
the comment gives the conversion.
"""
import os

import pytest

from conftest import ROOT
from seg_ssl.config import flatten, load_config, load_file

CAC_VOC = "CAC release configs/*.json, VOC R50 (Lai et al., CVPR 2021)"
CAC_CITY = "CAC release configs/*.json, Cityscapes R50"
CPS_VOC = "CPS release exp.voc/voc8.res50v3+.CPS+CutMix (Chen et al., CVPR 2021)"
CPS_CITY = "CPS release exp.city/city8.res50v3+.CPS+CutMix"
UM_VOC = "UniMatch release configs/pascal.yaml + unimatch.py (Yang et al., CVPR 2023)"
FM_VOC = "UniMatch release fixmatch.py + configs/pascal.yaml (the FixMatch rows of Yang et al., CVPR 2023)"
UM_CITY = "UniMatch release configs/cityscapes.yaml (818609d; its README: output stride changed from 8 to 16)"
# the networks (seg_ssl/models/release.py; logits checked against them in test_release_networks.py)
CAC_NET = ("CAC release models/modeling/{deeplab,aspp,decoder}.py, backbone/resnet.py, models/model.py "
           "(a7cd9b4)")
CPS_NET = "CPS release exp.*/*.res50v3+.CPS*/network.py + furnace/base_model/resnet.py"
UM_NET = "UniMatch release model/semseg/deeplabv3plus.py (818609d) + model/backbone/resnet.py"
# the evaluations (seg_ssl/evaluation/inference.py; predictions checked in test_release_protocols.py)
UM_EVAL = "UniMatch release supervised.py evaluate (7292bac)"
CPS_EVAL = "CPS release furnace/engine/evaluator.py scale_process + exp.*/config.py 'Eval Config'"
CAC_EVAL = "CAC release trainer.py _valid_epoch:148-155 (a7cd9b4)"

# Each published config uses its release's network (model.arch builds the stem, dilations and head)
CAC_MODEL = {
    "model.arch": ("deeplabv3plus_cac",
                   CAC_NET + ": 7x7 stem, layer4 multi-grid 2/4/8, its ASPP and decoder"),
    "model.output_stride": (16, CAC_NET + ": DeepLab(output_stride=16), model.py passes none"),
    "model.aspp_rates": ([6, 12, 18], CAC_NET + ": aspp.py dilations [1, 6, 12, 18] at OS 16"),
    "model.aspp_dropout": (0.5, CAC_NET + ": aspp.py nn.Dropout(0.5)"),
    "model.dropout": (0.1, CAC_NET + ": model.py classifier nn.Dropout(0.1)"),
    "model.proj_dim": (128, CAC_NET + ": model.py project, 256 -> 256 -> 128"),
}
CPS_MODEL = {
    "model.arch": ("deeplabv3plus_cps",
                   CPS_NET + ": resnet50 deep_stem, layer4 dilated 2/4/8, its ASPP and Head"),
    "model.output_stride": (16, CPS_NET + ": only layer4 is dilated"),
    "model.aspp_rates": ([6, 12, 18], CPS_NET + ": Head: ASPP(2048, 256, [6, 12, 18])"),
    "model.aspp_dropout": (0.0, CPS_NET + ": no dropout"),
    "model.dropout": (0.0, CPS_NET + ": bare 1x1 classifier"),
}
UM_MODEL = {
    "model.arch": ("deeplabv3plus_unimatch", UM_NET + ": deep stem, ASPPModule, reduce, fuse"),
    "model.output_stride": (16, UM_NET + ": replace_stride_with_dilation [False, False, True]"),
    "model.aspp_rates": ([6, 12, 18], UM_NET + ": dilations [6, 12, 18]"),
    "model.aspp_dropout": (0.0, UM_NET + ": ASPPModule has no dropout"),
    "model.dropout": (0.0, UM_NET + ": bare 1x1 classifier"),
}
# UniMatch V2 (LiheYoung/UniMatch-V2 at 70fe066)
UM2 = "UniMatch V2 release (Yang et al., TPAMI 2025)"
UM2_VOC = UM2 + " configs/pascal.yaml"
UM2_CITY = UM2 + " configs/cityscapes.yaml"
UM2_ADE = UM2 + " configs/ade20k.yaml"
UM2_COCO = UM2 + " configs/coco.yaml"
UM2_NET = UM2 + " model/semseg/dpt.py + model/backbone/dinov2.py"
UM2_OPT = UM2 + " unimatch_v2.py:67-73, 216-219 (supervised.py the same)"
UM2_MODEL = {
    "model.arch": ("dpt_unimatch_v2", UM2_NET + ": DINOv2 ViT/14, taps through the final norm, DPTHead"),
    "model.encoder": ("dinov2_small", UM2 + " configs/*.yaml: backbone: dinov2_small"),
    "model.vit_blocks": (None, UM2_NET + ": the whole ViT"),
    "model.dropout": (0.0, UM2_NET + ": scratch.output_conv, no dropout"),
    "train.optimizer": ("adamw", UM2_OPT + ": AdamW, betas (0.9, 0.999)"),
    "train.lr": (2e-4, UM2_OPT + ": head = lr 5e-6 x lr_multi 40"),
    "train.backbone_lr_mult": (0.025, UM2_OPT + ": backbone lr 5e-6 = head / 40"),
    "train.weight_decay": (0.01, UM2_OPT + ": weight_decay=0.01"),
    "train.decay_norm_and_bias": (True, UM2_OPT + ": one decay for all parameters, norms and biases too"),
    "train.poly_power": (0.9, UM2_OPT + ": (1 - iters / total_iters) ** 0.9"),
    "train.warmup_iters": (0, UM2_OPT + ": no warm-up"),
    "train.amp": ("none", UM2_OPT + ": fp32, no autocast"),
    "data.scale_range": ([0.5, 2.0], UM2 + " dataset/semi.py:44 resize(img, mask, (0.5, 2.0))"),
    "data.hflip": (True, UM2 + " dataset/semi.py:47 hflip p 0.5"),
}
# the unimatch_v2 configs: the method on the release's network, scored as the release reports
UM2_METHOD = {**UM2_MODEL, "method": ("unimatch_v2", UM2 + " unimatch_v2.py"),
              "eval.model": ("ema", UM2 + " README: the EMA model's numbers")}

PUBLISHED = {
    "voc_cac.yaml": {
        **CAC_MODEL,
        "method": ("cac", CAC_VOC),
        "model.encoder": ("resnet50", CAC_VOC),
        "data.crop_size": (320, CAC_VOC), "data.base_size": (400, CAC_VOC),
        "data.scale_range": ([0.5, 2.0], CAC_VOC + ": labeled"),
        "data.batch_size": (8, CAC_VOC + ": 2 GPUs x 4"), "data.unlabeled_batch_size": (8, CAC_VOC),
        "train.optimizer": ("sgd", CAC_VOC), "train.lr": (0.01, CAC_VOC), "train.momentum": (0.9, CAC_VOC),
        "train.weight_decay": (1e-4, CAC_VOC), "train.backbone_lr_mult": (0.1, CAC_VOC + ": backbone lr/10"),
        "train.poly_power": (0.9, CAC_VOC), "train.warmup_iters": (0, CAC_VOC),
        "train.iters": (92560, CAC_VOC + ": 80 epochs x 1,157"),
        "cac.unsup_start_iter": (5785, CAC_VOC + ": from epoch 6, no ramp"), "cac.rampup_iters": (0, CAC_VOC),
        "cac.iou_bound": ([0.1, 1.0], CAC_VOC), "cac.scale_range": ([0.8, 2.0], CAC_VOC + ": unlabeled"),
        "cac.selected_num": (12800, CAC_VOC + ": 6,400 per GPU x 2 GPUs (seg_ssl's is global)"),
        "cac.step_save": (1, CAC_VOC), "cac.temperature": (0.1, CAC_VOC), "cac.pos_thresh": (0.75, CAC_VOC),
        "cac.weight_unsup": (0.1, CAC_VOC), "cac.stride": (8, CAC_VOC),
        "eval.mode": ("pad_cac", CAC_EVAL + ": reflect pad to a multiple of 8, logits cropped back"),
        "eval.multiple": (8, CAC_EVAL), "eval.scales": ([1.0], CAC_VOC), "eval.flip": (False, CAC_VOC),
    },
    "cityscapes_cac.yaml": {
        **CAC_MODEL,
        "method": ("cac", CAC_CITY), "model.encoder": ("resnet50", CAC_CITY),
        "data.crop_size": (720, CAC_CITY), "data.base_size": (2048, CAC_CITY),
        "data.scale_range": ([0.5, 2.0], CAC_CITY), "data.color_jitter": (0.8, CAC_CITY + ": labeled jitter"),
        "data.batch_size": (8, CAC_CITY + ": 4 GPUs x 2"), "data.unlabeled_batch_size": (8, CAC_CITY),
        "train.lr": (0.1, CAC_CITY), "train.backbone_lr_mult": (0.1, CAC_CITY),
        "train.weight_decay": (1e-4, CAC_CITY),
        "train.iters": (92560, CAC_CITY + ": 80 x 1,157 (hard-coded)"),
        "cac.unsup_start_iter": (5785, CAC_CITY), "cac.scale_range": ([0.8, 2.0], CAC_CITY),
        "cac.selected_num": (64800, CAC_CITY + ": 16,200 per GPU x 4 GPUs"), "cac.step_save": (0, CAC_CITY),
        "cac.iou_bound": ([0.1, 1.0], CAC_CITY), "cac.temperature": (0.1, CAC_CITY),
        "cac.pos_thresh": (0.75, CAC_CITY), "cac.weight_unsup": (0.1, CAC_CITY),
        "eval.mode": ("pad_cac", CAC_EVAL + ": whole image, reflect pad to a multiple of 8"),
        "eval.multiple": (8, CAC_EVAL),
    },
    "voc_cps.yaml": {
        **CPS_MODEL,
        "method": ("cps", CPS_VOC), "model.encoder": ("resnet50", CPS_VOC),
        "data.crop_size": (512, CPS_VOC), "data.scale_range": ([0.5, 2.0], CPS_VOC),
        "data.hflip": (True, CPS_VOC), "data.batch_size": (8, CPS_VOC + ": 4 GPUs x 2"),
        "data.unlabeled_batch_size": (8, CPS_VOC), "train.optimizer": ("sgd", CPS_VOC),
        "train.momentum": (0.9, CPS_VOC), "train.poly_power": (0.9, CPS_VOC),
        "train.lr": (0.0025, CPS_VOC + ": 0.01 / 4 GPUs, the effective step (losses divided by W, then DDP)"),
        "train.weight_decay": (4e-4, CPS_VOC + ": 1e-4 x 4 GPUs, same effective step"),
        "train.backbone_lr_mult": (1.0, CPS_VOC + ": head and backbone share the lr"),
        "train.decay_norm_and_bias": (False, CPS_VOC + ": group_weight"),
        "train.iters": (39338, CPS_VOC + ": 34 epochs x 1,157"), "cps.cutmix": (True, CPS_VOC),
        "cps.weight": (1.0, CPS_VOC + ": lambda with CutMix"), "cps.mask_prop_range": ([0.25, 0.5], CPS_VOC),
        "cps.mask_boxes": (3, CPS_VOC), "cps.conf_thresh": (0.0, CPS_VOC + ": no threshold"),
        "train.ohem": (False, CPS_VOC), "cps.unsup_start_iter": (0, CPS_VOC),
        "cps.fg_marginal": (False, CPS_VOC),
        "eval.mode": ("slide_cps", CPS_EVAL + ": every VOC image fits one 512 window, centred"),
        "eval.window": (512, CPS_EVAL + ": eval_crop_size 512"),
        "eval.stride": (342, CPS_EVAL + ": ceil(512 x eval_stride_rate 2/3)"),
        "cps.eval_branch": ("1", CPS_VOC),
    },
    "cityscapes_cps.yaml": {
        **CPS_MODEL,
        "method": ("cps", CPS_CITY), "model.encoder": ("resnet50", CPS_CITY),
        "data.crop_size": (800, CPS_CITY), "data.batch_size": (8, CPS_CITY + ": 8 GPUs x 1"),
        "data.unlabeled_batch_size": (8, CPS_CITY),
        "train.lr": (0.0025, CPS_CITY + ": 0.02 / 8 GPUs, the effective step"),
        "train.weight_decay": (8e-4, CPS_CITY + ": 1e-4 x 8 GPUs"), "train.backbone_lr_mult": (1.0, CPS_CITY),
        "train.decay_norm_and_bias": (False, CPS_CITY),
        "train.iters": (44525, CPS_CITY + ": 137 epochs x 325"), "cps.cutmix": (True, CPS_CITY),
        "cps.weight": (5.0, CPS_CITY + ": lambda with CutMix"), "train.ohem": (True, CPS_CITY),
        "train.ohem_thresh": (0.7, CPS_CITY), "train.ohem_min_kept": (50000, CPS_CITY),
        "eval.mode": ("slide_cps", CPS_EVAL + ": flush windows, logits summed"),
        "eval.window": (800, CPS_EVAL + ": eval_crop_size 800"),
        "eval.stride": (534, CPS_EVAL + ": ceil(2/3 x 800)"), "cps.eval_branch": ("1", CPS_CITY),
    },
    "voc_unimatch.yaml": {
        **UM_MODEL,
        "method": ("unimatch", UM_VOC),
        "model.encoder": ("resnet50", UM_VOC + ": R50 runs in the release logs"),
        "data.crop_size": (321, UM_VOC + ": crop_size 321"), "data.scale_range": ([0.5, 2.0], UM_VOC),
        "data.hflip": (True, UM_VOC), "data.batch_size": (8, UM_VOC + ": 4 GPUs x 2"),
        "data.unlabeled_batch_size": (8, UM_VOC), "train.optimizer": ("sgd", UM_VOC),
        "train.momentum": (0.9, UM_VOC), "train.weight_decay": (1e-4, UM_VOC),
        "train.lr": (0.01, UM_VOC + ": head = lr 0.001 x lr_multi 10"),
        "train.backbone_lr_mult": (0.1, UM_VOC + ": backbone lr 0.001"), "train.poly_power": (0.9, UM_VOC),
        "train.iters": (92560, UM_VOC + ": 80 epochs x 1,157 unlabeled batches"),
        "unimatch.conf_thresh": (0.95, UM_VOC), "unimatch.weight_strong": (0.25, UM_VOC),
        "unimatch.weight_fp": (0.5, UM_VOC), "unimatch.fp_dropout": (0.5, UM_VOC + ": nn.Dropout2d(0.5)"),
        "unimatch.cutmix_p": (0.5, UM_VOC), "unimatch.box_size_range": ([0.02, 0.4], UM_VOC),
        "unimatch.box_ratio_range": ([0.3, 1 / 0.3], UM_VOC), "unimatch.color_jitter": (0.8, UM_VOC),
        "unimatch.jitter_strength": ([0.5, 0.5, 0.5, 0.25], UM_VOC), "unimatch.grayscale": (0.2, UM_VOC),
        "unimatch.blur": (0.5, UM_VOC), "train.ohem": (False, UM_VOC),
        "unimatch.unsup_start_iter": (0, UM_VOC),
        "eval.mode": ("whole", UM_EVAL + ": 'original', the unpadded image (size divisor 1)"),
    },
    "voc_fixmatch.yaml": {
        **UM_MODEL,
        "method": ("fixmatch", FM_VOC), "model.encoder": ("resnet50", FM_VOC),
        "data.crop_size": (321, FM_VOC + ": crop_size 321"),
        "data.batch_size": (8, FM_VOC + ": 4 GPUs x 2"), "data.unlabeled_batch_size": (8, FM_VOC),
        "train.optimizer": ("sgd", FM_VOC), "train.momentum": (0.9, FM_VOC),
        "train.weight_decay": (1e-4, FM_VOC), "train.lr": (0.01, FM_VOC + ": head = lr 0.001 x lr_multi 10"),
        "train.backbone_lr_mult": (0.1, FM_VOC), "train.poly_power": (0.9, FM_VOC),
        "train.iters": (92560, FM_VOC + ": 80 epochs x 1,157"), "fixmatch.conf_thresh": (0.95, FM_VOC),
        "fixmatch.cutmix_p": (0.5, FM_VOC),
        "fixmatch.box_size_range": ([0.02, 0.4], FM_VOC + ": obtain_cutmix_box"),
        "fixmatch.color_jitter": (0.8, FM_VOC + ": dataset/semi.py"), "fixmatch.grayscale": (0.2, FM_VOC),
        "fixmatch.blur": (0.5, FM_VOC), "fixmatch.unsup_start_iter": (0, FM_VOC),
        "eval.mode": ("whole", UM_EVAL + ": 'original'"),
    },
    "cityscapes_unimatch.yaml": {
        **UM_MODEL,
        "method": ("unimatch", UM_CITY), "model.encoder": ("resnet50", UM_CITY),
        "data.crop_size": (801, UM_CITY + ": crop_size 801"),
        "data.batch_size": (8, UM_CITY + ": 4 GPUs x 2"), "data.unlabeled_batch_size": (8, UM_CITY),
        "train.lr": (0.005, UM_CITY), "train.backbone_lr_mult": (1.0, UM_CITY + ": lr_multi 1"),
        "train.weight_decay": (1e-4, UM_CITY), "train.iters": (78000, UM_CITY + ": 240 epochs x 325"),
        "unimatch.conf_thresh": (0.0, UM_CITY), "train.ohem": (True, UM_CITY),
        "train.ohem_thresh": (0.7, UM_CITY),
        "train.ohem_min_kept": (100000, UM_CITY + ": 200,000 per GPU batch of 2 (seg_ssl's is per image)"),
        "eval.mode": ("slide_unimatch", UM_EVAL + ": 'sliding_window' from the origin, cut at the edge, "
                                                  "softmax summed"),
        "eval.window": (801, UM_EVAL + ": grid = crop_size"),
        "eval.stride": (534, UM_EVAL + ": int(grid * 2 / 3)"),
    },
    "ade20k_unimatch_v2.yaml": {
        **UM2_METHOD,
        "data.crop_size": (518, UM2_ADE + ": crop_size 518"),
        "data.num_classes": (150, UM2_ADE + ": nclass 150"),
        "data.batch_size": (8, UM2_ADE + ": batch_size 2 per GPU x 4 GPUs"),
        "train.iters": (149220, UM2_ADE + ": 60 epochs x 2,487 (the logs' iterations per epoch at 1/64)"),
        "train.ohem": (False, UM2_ADE + ": criterion CELoss"),
        "unimatch_v2.conf_thresh": (0.95, UM2_ADE + ": conf_thresh 0.95"),
        "eval.mode": ("resize_unimatch_v2", UM2 + " supervised.py:70-83 'original'"),
    },
    "coco_unimatch_v2.yaml": {
        **UM2_METHOD,
        "data.crop_size": (518, UM2_COCO + ": crop_size 518"),
        "data.num_classes": (81, UM2_COCO + ": nclass 81"),
        "data.batch_size": (16, UM2_COCO + ": batch_size 4 per GPU x 4 GPUs"),
        "train.iters": (147560, UM2_COCO + ": 20 epochs x 7,378 (1/512: 118,055 unlabeled / 16)"),
        "train.ohem": (False, UM2_COCO + ": criterion CELoss"),
        "unimatch_v2.conf_thresh": (0.95, UM2_COCO + ": conf_thresh 0.95"),
        "eval.mode": ("resize_unimatch_v2", UM2 + " supervised.py:70-83 'original'"),
    },
    "voc_unimatch_v2.yaml": {
        **UM2_METHOD,
        "data.crop_size": (518, UM2_VOC + ": crop_size 518"),
        "data.batch_size": (16, UM2_VOC + ": batch_size 4 per GPU x 4 GPUs"),
        "data.unlabeled_batch_size": (16, UM2_VOC + ": the same loader batch for unlabeled images"),
        "train.iters": (34680, UM2_VOC + ": 60 epochs x 578 (1/8 of train_aug: 9,259 unlabeled / 16)"),
        "train.ema_momentum": (0.996, UM2 + " unimatch_v2.py:221 min(1 - 1 / (iters + 1), 0.996)"),
        "train.ohem": (False, UM2_VOC + ": criterion CELoss"),
        "unimatch_v2.conf_thresh": (0.95, UM2_VOC + ": conf_thresh 0.95"),
        "unimatch_v2.cutmix_p": (0.5, UM2 + " dataset/semi.py: obtain_cutmix_box(p=0.5)"),
        "unimatch_v2.comp_drop": (True, UM2 + " unimatch_v2.py:179 model(..., comp_drop=True)"),
        "unimatch_v2.comp_drop_kept": (0.5, UM2_NET + ": dropout_prob 0.5 of the pairs kept"),
        "eval.mode": ("resize_unimatch_v2",
                      UM2 + " supervised.py:70-83 'original': resized to a multiple of 14"),
    },
    "cityscapes_unimatch_v2.yaml": {
        **UM2_METHOD,
        "data.crop_size": (798, UM2_CITY + ": crop_size 798"),
        "data.batch_size": (8, UM2_CITY + ": batch_size 2 per GPU x 4 GPUs"),
        "train.iters": (58500, UM2_CITY + ": 180 epochs x 325 (1/8: 2,603 unlabeled / 8, drop_last)"),
        "train.ohem": (True, UM2_CITY + ": criterion OHEM"),
        "train.ohem_thresh": (0.7, UM2_CITY + ": thresh 0.7"),
        "train.ohem_min_kept": (100000, UM2_CITY + ": 200,000 per GPU batch of 2 (per image here)"),
        "unimatch_v2.conf_thresh": (0.95, UM2_CITY + ": conf_thresh 0.95"),
        "eval.mode": ("slide_unimatch_v2", UM2 + " supervised.py:47-65 sliding_window, softmax summed"),
        "eval.window": (798, UM2 + " supervised.py: grid = crop_size"),
        "eval.stride": (532, UM2 + " supervised.py: int(grid * 2 / 3)"),
    },
}


def lookup(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs_keep_the_published_settings(name):
    cfg = load_config(os.path.join(ROOT, "configs", name))
    wrong = [f"{key} = {lookup(cfg, key)!r}, published {value!r} ({source})"
             for key, (value, source) in PUBLISHED[name].items() if lookup(cfg, key) != value]
    assert not wrong, "\n".join(wrong)


CONFIGS = os.path.join(ROOT, "configs")
# published method configs: voc_*, cityscapes_*, ade20k_*, coco_* that train a semi-supervised method
PUBLISHED_METHOD_CONFIGS = sorted(
    n for n in os.listdir(CONFIGS) if n.startswith(("voc_", "cityscapes_", "ade20k_", "coco_"))
    and load_file(os.path.join(CONFIGS, n)).get("method", "supervised") != "supervised")
TWINS = [n for n in PUBLISHED_METHOD_CONFIGS
         if os.path.isfile(os.path.join(CONFIGS, n.replace(".yaml", "_sup.yaml")))]


def test_every_published_method_config_has_a_labeled_only_twin():
    # voc_cps_lite2.yaml is CPS on a smaller encoder beside voc_cps.yaml, not a published setting
    assert set(PUBLISHED_METHOD_CONFIGS) - set(TWINS) == {"voc_cps_lite2.yaml"}


@pytest.mark.parametrize("method_config", TWINS)
def test_labeled_only_twins_train_exactly_like_their_method(method_config):
    """``X_sup.yaml`` is the baseline of method config ``X.yaml``: the same model, data, schedule,
    supervised loss and evaluation, only the method differs (and CAC's projector, which the baseline
    does not use)."""
    method = flatten(load_config(os.path.join(ROOT, "configs", method_config)).to_dict())
    twin = flatten(load_config(os.path.join(ROOT, "configs",
                                            method_config.replace(".yaml", "_sup.yaml"))).to_dict())
    assert twin["method"] == "supervised" and method["method"] != "supervised"
    # a twin scores its student: labeled-only training keeps no EMA teacher (eval.model)
    shared = [k for k in method if k.startswith(("data.", "train.", "eval.", "model.")) and k != "eval.model"]
    assert len(shared) > 40
    assert {k: twin[k] for k in shared} == {k: method[k] for k in shared}
