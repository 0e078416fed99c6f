"""Labeled-only baseline: the supervised loss (``train.ohem``: cross-entropy or OHEM) on the
labeled crops, the same labeled term as every semi-supervised method's."""
from __future__ import annotations

from seg_ssl.methods.base import Method


class Supervised(Method):
    name = "supervised"

    def training_step(self, model, labeled: dict, unlabeled: dict | None, iteration: int) -> dict:
        sup = self.supervised_loss(model(labeled["image"]), labeled["label"])
        return {"loss": sup, "sup": sup}
