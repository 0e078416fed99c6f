"""Labeled-only baseline: cross-entropy on the labeled crops (ignore index 255)."""
from __future__ import annotations

import torch.nn.functional as F

from seg_ssl.methods.base import Method


class Supervised(Method):
    name = "supervised"

    def training_step(self, model, labeled: dict, unlabeled: dict | None, iteration: int) -> dict:
        logits = model(labeled["image"])
        sup = F.cross_entropy(logits, labeled["label"], ignore_index=self.ignore_index)
        return {"loss": sup, "sup": sup}
