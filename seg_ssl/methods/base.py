"""The contract between a method and the trainer, as code.

A method is one file with one class. It names itself and its config section; the trainer calls
the hooks below and nothing else (every hook has a default here). What the trainer guarantees:

- The trainer builds the network with ``build_model()``, moves it to the device (with SyncBatchNorm
  and DDP's wrapper when distributed) and hands it to every hook that needs it: a method holds no
  network of its own, only its state between steps.
- ``training_step(model, labeled, unlabeled, iteration)`` is called once per iteration with the
  model in train mode (DDP-wrapped when distributed: call it, never reach into ``.module`` for a
  forward). ``labeled`` holds ``image`` (B, 3, H, W), ``label`` (B, H, W; ignore index where
  unknown) and ``valid`` (B, H, W; False on padding), B = data.batch_size / world size.
  ``unlabeled`` is None unless ``uses_unlabeled``; then it is what ``unlabeled_pipeline`` makes,
  batched, with ``unlabeled_draws(cfg) x data.unlabeled_batch_size / world size`` images. Both are
  on the training device. ``iteration`` counts from 0 and survives a resume.
- It returns a dict: ``loss``, the scalar tensor to back-propagate, and any scalars to log (tensors
  or floats, averaged over the log interval; a key missing in some steps is averaged over the steps
  that have it). Keys with a ``/`` go to TensorBoard only, not the log line.
- Before ``first_unlabeled_iteration()`` (a labeled-only warm-up: the unsupervised weight is 0)
  ``unlabeled`` is None: the method returns the labeled terms only, on the same scale as its full
  loss. The unlabeled stream then starts at that iteration's batch (batch k is a function of k,
  ``seg_ssl.data.streams``), so the data order is what it would be had every batch been drawn.
- ``after_step(model, iteration)`` is called once per step, right after the optimizer's update (not
  after a step skipped for a non-finite loss), with the plain model and the step's iteration (an
  EMA teacher follows the student here).
- ``world_size`` is set before the first step; collectives (``seg_ssl.collectives``) are no-ops alone.
- Checkpoints hold ``model.state_dict()`` and ``method.state_dict()``: the method's own state in plain
  data (tensors, numbers, lists, dicts), e.g. a feature bank, a teacher's weights or the generator
  of its CutMix boxes; a resume gives it back through ``load_state_dict`` before the first step.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seg_ssl.data.classes import first_class_is_background
from seg_ssl.data.cutmix import halves
from seg_ssl.data.transforms import WeakStrongPipeline, photometric_ops, train_pipeline
from seg_ssl.errors import ConfigError
from seg_ssl.losses.ohem import ohem_cross_entropy
from seg_ssl.losses.pseudo_labels import pseudo_labels
from seg_ssl.models.ema import ema_momentum, make_teacher, update_teacher
from seg_ssl.models.segmentor import build_segmentor, logits
from seg_ssl.schema import NUM, field


class Method:
    name = ""              # the value of the config's ``method`` key
    config_section: dict = {}  # the schema of the method's own section (seg_ssl.schema fields), {} for none
    uses_unlabeled = False   # the trainer builds the unlabeled stream only when True
    trains_teacher = False   # an EMA teacher whatever train.ema says (UniMatch V2)
    find_unused_parameters = False  # DDP: some parameters get no gradient in some steps
    loss_scale_note = ""     # logged at the start where ``loss`` is not on labeled-only's scale

    def __init__(self, cfg, world_size: int = 1):
        self.cfg = cfg
        self.ignore_index = cfg.data.ignore_index
        self.world_size = world_size
        self.keeps_ema = self.trains_teacher or cfg.train.ema
        self.teacher = None  # the EMA of the model (``setup``), where ``keeps_ema``
        if cfg.eval.model == "ema" and not self.keeps_ema:
            raise ConfigError(f"eval.model = ema, but method {self.name} keeps no EMA of its weights: set "
                              f"train.ema=true")

    @classmethod
    def unlabeled_draws(cls, cfg) -> int:
        """Unlabeled images drawn per unlabeled batch image (CutMix from a second image: 2)."""
        return 1

    @classmethod
    def dry_run_sizes(cls, cfg, world_size: int, unlabeled_per_process: int) -> dict:
        """Extra sizes ``tools/train.py --dry-run`` prints for this method (CAC: negatives, overlap)."""
        return {}

    @classmethod
    def smoke_overrides(cls, start: int) -> list[str]:
        """Config overrides that make a few-iteration run (``tools/train.py --smoke``) reach every
        loss term from iteration ``start`` on."""
        return []

    def build_model(self) -> nn.Module:
        """The network trained, built from ``cfg.model`` (one Segmentor unless overridden)."""
        return build_segmentor(self.cfg.model, self.cfg.data.num_classes)

    def unlabeled_pipeline(self, data_cfg):
        """The transform of an unlabeled image (with its label where ``data.unlabeled_truth``)."""
        return train_pipeline(data_cfg, labeled=data_cfg.unlabeled_truth)

    def setup(self, model) -> None:
        """Called once with the model on its device, before a resume restores ``load_state_dict``:
        the EMA teacher starts as a copy of it."""
        if self.keeps_ema:
            self.teacher = make_teacher(model)

    def training_step(self, model, labeled: dict, unlabeled: dict | None, iteration: int) -> dict:
        """One iteration's losses; see the module docstring for what comes in and goes out."""
        raise NotImplementedError

    def first_unlabeled_iteration(self) -> int:
        """The first iteration whose step reads the unlabeled batch: the trainer draws none before
        it, so the warm-up costs no augmentation of images nobody reads."""
        return 0

    def after_step(self, model, iteration: int) -> None:
        """Called after the optimizer's update of step ``iteration``, with the plain model: the
        EMA teacher follows it (``seg_ssl.models.ema``)."""
        if self.teacher is not None:
            update_teacher(self.teacher, model, ema_momentum(iteration, self.cfg.train.ema_momentum))

    def evaluated(self, model):
        """The network evaluation scores: the model, or its EMA (``eval.model``)."""
        return self.teacher if self.cfg.eval.model == "ema" else model

    def supervised_loss(self, logits, label):
        """The labeled term, one training setting for every method and its labeled-only twin:
        cross-entropy on the labeled pixels, or with ``train.ohem`` on the hardest ones (at least
        ``train.ohem_min_kept`` per labeled image, as the releases keep a count per GPU batch)."""
        t = self.cfg.train
        if t.ohem:
            return ohem_cross_entropy(logits, label, t.ohem_thresh, t.ohem_min_kept * logits.shape[0],
                                      self.ignore_index)
        return F.cross_entropy(logits, label, ignore_index=self.ignore_index)

    def predictor(self, model):
        """The ``images -> logits`` function evaluation uses (``model`` is unwrapped, in eval mode)."""
        return model

    def network(self, model):
        """The one network of ``model`` that the inspection tools look into (Grad-CAM, t-SNE)."""
        return model

    def size_divisor(self, model) -> int:
        """Input sides must be multiples of this at evaluation."""
        return model.size_divisor

    def state_dict(self) -> dict:
        """The method's own state between steps, saved in checkpoints (plain data); the teacher's
        weights under ``ema``."""
        return {"ema": self.teacher.state_dict()} if self.teacher is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        if self.teacher is not None and "ema" in state:
            self.teacher.load_state_dict(state["ema"])


def warmup_ramp(iteration: int, start: int, rampup_iters: int) -> float:
    """Weight factor of an unsupervised term at ``iteration`` (0-based): 0 before ``start`` (the
    labeled-only warm-up), then linear over ``rampup_iters`` iterations to 1 (at once when 0).
    The first iteration of the ramp already counts: 1 / rampup_iters."""
    if iteration < start:
        return 0.0
    if rampup_iters <= 0:
        return 1.0
    return min(1.0, (iteration - start + 1) / rampup_iters)


# fields several semi-supervised sections share; each method lists them in its own section
def warmup_fields(what: str = "") -> dict:
    return {"unsup_start_iter": field(int, 0, doc="labeled-only warm-up" + what),
            "rampup_iters": field(int, 0, doc="linear ramp of the unsupervised weight after the start")}


def strong_view_fields(what: str = "a strong view") -> dict:
    """The strong views of the UniMatch release family (FixMatch, UniMatch): CutMix boxes and the
    photometric ops, with the release's defaults (``configs/pascal.yaml``, ``dataset/transform.py``)."""
    return {
        "cutmix_p": field(NUM, 0.5, doc=f"probability of a CutMix box in {what}"),
        "box_size_range": field(list, [0.02, 0.4], doc="box area, fraction of the image"),
        "box_ratio_range": field(list, [0.3, 3.3333333333333335], doc="box aspect h / w"),
        "color_jitter": field(NUM, 0.8, doc=f"probability of colour jitter in {what}"),
        "jitter_strength": field(list, [0.5, 0.5, 0.5, 0.25], doc="brightness, contrast, saturation, hue"),
        "grayscale": field(NUM, 0.2),
        "blur": field(NUM, 0.5, doc="probability of Gaussian blur, sigma 0.1-2"),
    }


def weak_strong_pipeline(c, d, views: int) -> WeakStrongPipeline:
    """The unlabeled sample of a ``strong_view_fields`` section ``c``: a weak view and ``views``
    strong views of the same crop."""
    strong = photometric_ops(c.color_jitter, c.grayscale, c.blur, jitter=c.jitter_strength, blur_limit=0)
    return WeakStrongPipeline(d, strong, labeled=d.unlabeled_truth, views=views)


@torch.no_grad()
def pasted_targets(model, images, fg_marginal: bool = False):
    """Pseudo labels and confidences of the images a CutMix box is pasted from, predicted with the
    network in eval mode (as the UniMatch release does), which goes back to train mode after."""
    model.eval()
    try:
        return pseudo_labels(logits(model, images), fg_marginal=fg_marginal, return_conf=True)
    finally:
        model.train()


FG_MARGINAL = field(bool, False,
                    doc="class 0 is background: pseudo label background only where p(background) "
                    ">= 0.5, else the likeliest foreground class, whose confidence is p(class | foreground) "
                    "(not in the papers)")


class SemiSupervised(Method):
    """What the semi-supervised methods share: their config section as ``self.c``, the warm-up and
    ramp of the unsupervised weight, the ``fg_marginal`` guard, the ``joint_forward`` switch, and a
    seeded generator for CutMix boxes whose state is checkpointed."""

    uses_unlabeled = True
    smoke_thresholds = ("conf_thresh",)  # a model a few iterations old is confident nowhere: 0 in --smoke

    @classmethod
    def smoke_overrides(cls, start: int) -> list[str]:
        return ([f"{cls.name}.unsup_start_iter={start}", f"{cls.name}.rampup_iters=0"]
                + [f"{cls.name}.{k}=0.0" for k in cls.smoke_thresholds if k in cls.config_section])

    def __init__(self, cfg, world_size: int = 1):
        super().__init__(cfg, world_size)
        self.c = cfg[self.name]
        self.mask_rng = np.random.default_rng(cfg.seed)
        names = cfg.data.class_names
        self.background = first_class_is_background(names)
        if self.c.get("fg_marginal") and names and not self.background:
            # Cityscapes has no background class: fg_marginal would treat 'road' as background
            raise ConfigError(f"{self.name}.fg_marginal needs class 0 to be background; data.class_names[0] "
                              f"is {names[0]!r}")

    def ramp(self, iteration: int) -> float:
        """0 during the labeled-only warm-up, then up to 1 (``unsup_start_iter``, ``rampup_iters``)."""
        return warmup_ramp(iteration, self.c.unsup_start_iter, self.c.rampup_iters)

    def first_unlabeled_iteration(self) -> int:
        return self.c.unsup_start_iter  # the ramp is 0 before it: each method's warm-up branch

    def warm_up(self, model, labeled: dict, scale: float = 1.0) -> dict:
        """A step of the labeled-only warm-up (the unsupervised weight is 0): the supervised term,
        scaled to the method's full loss (UniMatch's release halves it, ``scale`` 0.5)."""
        sup = self.supervised_loss(logits(model, labeled["image"]), labeled["label"])
        return {"loss": sup * scale if scale != 1.0 else sup, "sup": sup}

    def groups(self, *sizes):
        """Batch groups of a forward: None (one batch, shared BatchNorm statistics) with
        ``train.joint_forward``, else each part on its own, as the releases forward them."""
        return None if self.cfg.train.joint_forward else list(sizes)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "mask_rng": self.mask_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "mask_rng" in state:
            self.mask_rng.bit_generator.state = state["mask_rng"]


class WeakToStrong(SemiSupervised):
    """The UniMatch release family (FixMatch, UniMatch). Each unlabeled image comes as a weak view
    and ``views`` strong views of the same crop (``weak_strong_pipeline``); the unlabeled batch is
    drawn twice, its second half being the images the strong views' CutMix boxes come from. A step
    is the labeled-only warm-up until the unsupervised weight rises (the labeled term at half
    weight: the release's loss is ``(sup + unsup) / 2``), then the method's ``consistency_step``."""

    views = 1
    loss_scale_note = ("loss = (sup + unsup) / 2, as in the UniMatch release (unsup: the method's weighted "
                       "unlabeled terms), so in the warm-up loss is half of sup; compare sup with "
                       "labeled-only's loss")

    @classmethod
    def unlabeled_draws(cls, cfg) -> int:
        return 2

    def unlabeled_pipeline(self, d):
        return weak_strong_pipeline(self.c, d, views=self.views)

    def training_step(self, model, labeled: dict, unlabeled: dict | None, iteration: int) -> dict:
        lam = self.ramp(iteration)
        if lam == 0.0:  # labeled-only warm-up, on the same scale as the full loss
            return self.warm_up(model, labeled, scale=0.5)
        split = {k: halves(v) for k, v in unlabeled.items()}
        own, pasted = ({k: v[i] for k, v in split.items()} for i in (0, 1))
        return self.consistency_step(model, labeled, own, pasted, lam)

    def consistency_step(self, model, labeled: dict, own: dict, pasted: dict, lam: float) -> dict:
        """The full step: ``own`` holds the batch's views (``image``, the weak one, the strong ones,
        ``valid``), ``pasted`` the same of the images its boxes come from; ``lam``: the unsupervised
        weight."""
        raise NotImplementedError
