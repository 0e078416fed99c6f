"""Labeled-only baseline: cross-entropy on the labeled crops (ignore index 255)."""
from __future__ import annotations

import torch.nn.functional as F

from seg_ssl.models.segmentor import build_segmentor


class Supervised:
    uses_unlabeled = False

    def __init__(self, cfg):
        self.cfg = cfg
        self.ignore_index = cfg.data.ignore_index
        self.world_size = 1  # the trainer sets the number of processes
        self.model = self.build_model(cfg)

    @staticmethod
    def unlabeled_draws(cfg) -> int:
        """Unlabeled images drawn per unlabeled batch image (CutMix mixes pairs: 2)."""
        return 1

    def build_model(self, cfg):
        return build_segmentor(cfg.model, cfg.data.num_classes)

    def training_step(self, model, labeled: dict, unlabeled: dict | None, iteration: int) -> dict:
        logits = model(labeled["image"])
        sup = F.cross_entropy(logits, labeled["label"], ignore_index=self.ignore_index)
        return {"loss": sup, "sup": sup}

    def predictor(self, model):
        """The ``x -> logits`` function evaluation uses (``model`` is unwrapped)."""
        return model

    def size_divisor(self, model) -> int:
        return model.size_divisor

    # extra state a method keeps between steps (CAC's feature bank); none here
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
