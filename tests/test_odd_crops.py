"""Every method trains at a crop whose side is odd (the UniMatch releases train at 321 and 801):
labeled crops, weak and strong views, CutMix boxes and CAC's overlapping crops are drawn at that
size, and every network path takes it: smp's DeepLabv3+ and PSPNet (padded inside the network to
their output stride and cut back) and the releases' own networks (any size)."""
import math

import pytest
import torch

from conftest import digits_cfg
from seg_ssl.engine.trainer import Trainer

CROP = 33  # 321 scaled down: odd, and a multiple of neither 8 nor 16
# each method with its unlabeled term on from the first step
METHODS = {
    "supervised": ((), ()),
    "unimatch": (("unimatch.unsup_start_iter=0", "unimatch.rampup_iters=0", "unimatch.conf_thresh=0.0"),
                 ("strong1", "strong2", "fp")),
    "fixmatch": (("fixmatch.unsup_start_iter=0", "fixmatch.conf_thresh=0.0"), ("strong",)),
    "cps": (("cps.unsup_start_iter=0", "cps.rampup_iters=0", "cps.cutmix=true"), ("cps",)),
    "cac": (("cac.unsup_start_iter=0", "cac.pos_thresh=0.0", "cac.selected_num=64", "cac.hflip=true",
             "cac.scale_range=[1.0,1.0]", "model.proj_dim=16"), ("unsup", "overlap_px")),
}
SMP = ("model.encoder_depth=3", "model.decoder_channels=16")  # output stride 8: 33 is padded to 40
RELEASE = {  # the published configs' networks (configs/_base_/models/*_r50.yaml), from scratch
    "unimatch": ("model.arch=deeplabv3plus_unimatch", "model.encoder=resnet50", "model.aspp_rates=[6,12,18]",
                 "model.aspp_dropout=0.0", "model.dropout=0.0"),
    "cps": ("model.arch=deeplabv3plus_cps", "model.encoder=resnet50", "model.aspp_rates=[6,12,18]",
            "model.aspp_dropout=0.0", "model.dropout=0.0"),
    "cac": ("model.arch=deeplabv3plus_cac", "model.encoder=resnet50", "model.aspp_rates=[6,12,18]"),
}
RELEASE_OF = {"supervised": "unimatch", "unimatch": "unimatch", "fixmatch": "unimatch", "cps": "cps",
              "cac": "cac"}


def train_at_odd_crop(root, work_dir, method, *network, steps=2):
    """Training steps on batches drawn by the run's own streams (no checkpoint, no evaluation: what
    is under test is the crops and the forwards)."""
    overrides, unsup_keys = METHODS[method]
    cfg = digits_cfg(root, work_dir, f"method={method}", f"data.crop_size={CROP}", "data.batch_size=2",
                     "data.unlabeled_batch_size=2", "train.iters=2", "train.lr=0.002", *overrides, *network)
    trainer = Trainer(cfg)
    streams = trainer.batch_streams()
    logs = []
    for _ in range(steps):
        labeled, unlabeled, _ = trainer.next_batches(*streams)
        # every image and mask of both batches is a CROP x CROP crop
        sides = {tuple(v.shape[-2:]) for batch in (labeled, unlabeled or {}) for v in batch.values()
                 if torch.is_tensor(v) and v.dim() >= 3}
        assert sides == {(CROP, CROP)}, sides
        logs.append({k: float(v) for k, v in trainer.step(labeled, unlabeled).items()})
    assert all(math.isfinite(log["loss"]) for log in logs)
    assert all(log[k] > 0 for log in logs for k in unsup_keys), logs  # the unlabeled terms ran
    trainer.model.eval()
    with torch.no_grad():  # and the trained network predicts at the crop's size
        net = trainer.method.predictor(trainer.model)
        assert net(torch.zeros(1, 3, CROP, CROP)).shape == (1, 11, CROP, CROP)
    trainer.close()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_at_an_odd_crop_on_smp_deeplab(digits_root, tmp_path, method):
    train_at_odd_crop(digits_root, str(tmp_path), method, *SMP)


@pytest.mark.parametrize("method", ["supervised", pytest.param("cac", marks=pytest.mark.slow)])
def test_pspnet_trains_at_an_odd_crop(digits_root, tmp_path, method):
    train_at_odd_crop(digits_root, str(tmp_path), method, "model.arch=pspnet", "model.encoder=resnet18",
                      "model.encoder_depth=5", "model.output_stride=8")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_at_an_odd_crop_on_its_release_network(digits_root, tmp_path, method):
    # one step: a ResNet-50 step costs seconds on this CPU even at 33 x 33 (its weights, not the pixels)
    network = ("model.encoder_depth=5", *RELEASE[RELEASE_OF[method]])
    train_at_odd_crop(digits_root, str(tmp_path), method, *network, steps=1)
