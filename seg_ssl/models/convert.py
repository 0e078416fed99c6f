"""Checkpoints of the UniMatch, CPS and CAC releases, renamed into seg_ssl's model, key by key.

Each release saves its model in its own way; every key is renamed by one explicit prefix rule below
(the modules of ``seg_ssl.models.release`` keep the releases' names under the prefix), and a key no
rule covers is an error, never dropped. Loading into the model of the published config is strict.

    release    what its training script saves                                      its model's keys
    unimatch   a bare state_dict, or {'model': DDP state_dict, 'optimizer', ...}    backbone., head., reduce., fuse., classifier.
    cps        {'model': state_dict (no 'module.'), 'optimizer_l', 'optimizer_r', ...}  branch1., branch2. (each backbone., head., classifier.)
    cac        {'arch', 'epoch', 'state_dict': DDP state_dict, 'monitor_best', 'config'}  encoder.backbone., encoder.aspp., encoder.decoder., classifier., project.
"""
from __future__ import annotations

import torch

from seg_ssl.errors import ConfigError

# release -> [(release prefix, seg_ssl prefix)], in the order they are tried
RULES: dict[str, list[tuple[str, str]]] = {
    "unimatch": [("backbone.", "encoder."), ("head.", "decoder.head."), ("reduce.", "decoder.reduce."),
                 ("fuse.", "decoder.fuse."), ("classifier.", "classifier.1.")],
    "cps": [(f"branch{b}.{old}", f"branch{b}.{new}") for b in (1, 2)
            for old, new in (("backbone.", "encoder."), ("head.", "decoder."), ("classifier.", "classifier.1."))],
    "cac": [("encoder.backbone.", "encoder."), ("encoder.aspp.", "decoder.aspp."), ("encoder.decoder.", "decoder."),
            ("classifier.", "classifier."), ("project.", "projector.")],
}
ARCH = {"unimatch": "deeplabv3plus_unimatch", "cps": "deeplabv3plus_cps", "cac": "deeplabv3plus_cac"}
# the key whose first dimension is the class count (picks the VOC or the Cityscapes config)
CLASSIFIER = {"unimatch": "classifier.weight", "cps": "branch1.classifier.weight", "cac": "classifier.1.weight"}


def release_state(obj, release: str, path: str = "checkpoint") -> dict:
    """The model weights inside what a release's script saved (see the table above), without DDP's
    ``module.`` prefix."""
    if release not in RULES:
        raise ConfigError(f"--from {release!r}: expected one of {sorted(RULES)}")
    state = obj
    for entry in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(entry), dict):
            state = state[entry]
            break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"{path}: no state dict of tensors found (a {release} checkpoint holds one as "
                          f"{'a bare dict or under model' if release == 'unimatch' else 'model' if release == 'cps' else 'state_dict'})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _rename(state: dict, rules: list[tuple[str, str]], what: str) -> dict:
    out, unmatched = {}, []
    for key, value in state.items():
        for old, new in rules:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise ConfigError(f"{len(unmatched)} keys are not {what} keys ({', '.join(unmatched[:3])}"
                          f"{', ...' if len(unmatched) > 3 else ''})")
    return out


def from_release(state: dict, release: str) -> dict:
    """A release's state dict (``release_state``) renamed to seg_ssl's keys."""
    return _rename(state, RULES[release], f"{release} release")


def to_release(state: dict, release: str) -> dict:
    """seg_ssl's state dict of a release network renamed back to the release's keys (to evaluate a
    model trained here with the release's own code)."""
    return _rename(state, [(new, old) for old, new in RULES[release]], f"seg_ssl {ARCH[release]}")


def num_classes_of(state: dict, release: str) -> int | None:
    weight = state.get(CLASSIFIER[release])
    return int(weight.shape[0]) if weight is not None else None
