"""Checkpoints of the UniMatch, CPS, CAC and UniMatch V2 releases, renamed into seg_ssl's model, key by key.

Each release saves its model in its own way; every key is renamed by one explicit prefix rule below
(the modules of ``seg_ssl.models.release``, ``dinov2`` and ``dpt`` keep the releases' names under the
prefix) or dropped by name with its reason, and a key no rule covers is an error, never dropped.
Loading into the model of the published config is strict.

    unimatch     saves a bare state_dict, or {'model': DDP state_dict, 'optimizer', ...};
                 keys backbone., head., reduce., fuse., classifier.
    cps          {'model': state_dict (no 'module.'), 'optimizer_l', 'optimizer_r', ...};
                 keys branch1., branch2. (each backbone., head., classifier.)
    cac          {'arch', 'epoch', 'state_dict': DDP state_dict, 'monitor_best', 'config'};
                 keys encoder.backbone., encoder.aspp., encoder.decoder., classifier., project.
    unimatch_v2  {'model': DDP state_dict, 'model_ema': DDP state_dict, 'optimizer', 'epoch', ...}
                 (unimatch_v2.py; supervised.py saves 'model' only); keys backbone., head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from seg_ssl.errors import ConfigError


@dataclass(frozen=True)
class ReleaseFormat:
    arch: str                           # seg_ssl's model.arch of the release's network
    rules: tuple                        # (release prefix, seg_ssl prefix), tried in order
    classifier: str                     # the release key whose first dimension is the class count
    entries: tuple = ("model", "state_dict")  # where a saved dict holds the weights (the first found)
    dropped: tuple = ()                 # (release key, why): keys seg_ssl's network does not have
    student_entry: str | None = None    # with an EMA teacher in ``entries``: where the student is


FORMATS = {
    "unimatch": ReleaseFormat(
        "deeplabv3plus_unimatch",
        (("backbone.", "encoder."), ("head.", "decoder.head."), ("reduce.", "decoder.reduce."),
         ("fuse.", "decoder.fuse."), ("classifier.", "classifier.1.")),
        "classifier.weight"),
    "cps": ReleaseFormat(
        "deeplabv3plus_cps",
        tuple((f"branch{b}.{old}", f"branch{b}.{new}") for b in (1, 2)
              for old, new in (("backbone.", "encoder."), ("head.", "decoder."),
                               ("classifier.", "classifier.1."))),
        "branch1.classifier.weight"),
    "cac": ReleaseFormat(
        "deeplabv3plus_cac",
        (("encoder.backbone.", "encoder."), ("encoder.aspp.", "decoder.aspp."),
         ("encoder.decoder.", "decoder."), ("classifier.", "classifier."), ("project.", "projector.")),
        "classifier.1.weight"),
    # the head's output_conv is the Segmentor's classifier (seg_ssl/models/dpt.py), so its rule comes first
    "unimatch_v2": ReleaseFormat(
        "dpt_unimatch_v2",
        (("backbone.", "encoder."), ("head.scratch.output_conv.", "classifier."), ("head.", "decoder.")),
        "head.scratch.output_conv.2.weight",
        entries=("model_ema",),
        dropped=(("backbone.mask_token", "DINOv2's masked-image-modelling token, which no forward uses"),),
        student_entry="model"),
}


def _where(fmt: ReleaseFormat, student: bool) -> str:
    entries = (fmt.student_entry,) if student else fmt.entries
    return "a bare dict or under " + " or ".join(entries)


def release_state(obj, release: str, path: str = "checkpoint", student: bool = False) -> dict:
    """The model weights inside what a release's script saved (see the table above), without DDP's
    ``module.`` prefix: a release with an EMA teacher gives the teacher's, or with ``student`` the
    student's."""
    if release not in FORMATS:
        raise ConfigError(f"--from {release!r}: expected one of {sorted(FORMATS)}")
    fmt = FORMATS[release]
    if student and fmt.student_entry is None:
        with_ema = ", ".join(n for n, f in FORMATS.items() if f.student_entry)
        raise ConfigError(f"--student: a {release} checkpoint holds one model (the EMA/student choice is "
                          f"{with_ema}'s)")
    entries = (fmt.student_entry,) if student else fmt.entries
    state = obj
    for entry in entries:
        if isinstance(state, dict) and isinstance(state.get(entry), dict):
            state = state[entry]
            break
    else:
        if fmt.student_entry and isinstance(obj, dict) and isinstance(obj.get(fmt.student_entry), dict):
            raise ConfigError(f"{path}: no {' or '.join(entries)} (EMA weights), only {fmt.student_entry} "
                              f"(a labeled-only run's checkpoint?): --student converts {fmt.student_entry}")
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"{path}: no state dict of tensors found (a {release} checkpoint holds one as "
                          f"{_where(fmt, student)})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _rename(state: dict, rules, what: str) -> dict:
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
    """A release's state dict (``release_state``) renamed to seg_ssl's keys, its dropped keys left out."""
    fmt = FORMATS[release]
    dropped = {key for key, _ in fmt.dropped}
    return _rename({k: v for k, v in state.items() if k not in dropped}, fmt.rules, f"{release} release")


def to_release(state: dict, release: str) -> dict:
    """seg_ssl's state dict of a release network renamed back to the release's keys (to evaluate a
    model trained here with the release's own code; dropped keys are not restored)."""
    fmt = FORMATS[release]
    return _rename(state, [(new, old) for old, new in fmt.rules], f"seg_ssl {fmt.arch}")


def num_classes_of(state: dict, release: str) -> int | None:
    weight = state.get(FORMATS[release].classifier)
    return int(weight.shape[0]) if weight is not None else None
