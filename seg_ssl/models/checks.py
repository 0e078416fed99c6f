"""Checks of a config's ``model`` section that need to know the networks: the encoder exists, a
release's network is built on its ResNet, packaged weights fit their encoder, and the input
normalisation the weights expect. ``seg_ssl.config`` calls them while validating; smp and timm are
imported only here, when an encoder name has to be looked up (they take seconds to import, and
reading a config or a metrics file needs neither)."""
from __future__ import annotations

import difflib

from seg_ssl.errors import ConfigError
from seg_ssl.models import dinov2
from seg_ssl.models.pretrained import check_encoder, expected_normalization
from seg_ssl.models.release import RELEASES, RESNET_LAYERS


def check_encoder_name(name: str, origin: str) -> None:
    """smp's encoders, or ``tu-`` plus any timm model: else a one-line error with a did-you-mean."""
    import segmentation_models_pytorch as smp
    import timm
    known = smp.encoders.get_encoder_names()
    if name in known:
        return
    if name.startswith("tu-"):
        if timm.is_model(name[3:]):
            return
        known = ["tu-" + m for m in timm.list_models()]
    if name in dinov2.SIZES:
        raise ConfigError(f"{origin}: model.encoder = {name!r} is a DINOv2 ViT: use it with "
                          f"model.arch={dinov2.ARCH}")
    hint = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    raise ConfigError(f"{origin}: model.encoder = {name!r} is not an smp encoder (or tu- and a timm model)"
                      + (f"; did you mean {hint[0]!r}?" if hint else ""))


def check_model_section(m: dict, origin: str) -> None:
    """The encoder exists (a release's network: its ResNet; UniMatch V2's: a DINOv2 size) and
    packaged weights fit it."""
    dinov2.check_model_section(m, origin)
    if m["arch"] == dinov2.ARCH:
        return
    if m["arch"] in RELEASES:
        if m["encoder"] not in RESNET_LAYERS:
            raise ConfigError(f"{origin}: model.encoder = {m['encoder']!r}: {m['arch']} is built on "
                              f"{' or '.join(RESNET_LAYERS)} (any other encoder: model.arch=deeplabv3plus)")
    else:
        check_encoder_name(m["encoder"], origin)
    check_encoder(m["encoder_weights"], m["encoder"])


def input_normalization(m: dict) -> tuple[list, list]:
    """The (mean, std) the encoder weights of model section ``m`` were trained with."""
    return expected_normalization(m["encoder_weights"])
