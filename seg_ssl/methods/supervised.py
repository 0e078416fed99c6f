"""Labeled-only baseline: cross-entropy on the labeled crops (ignore index 255); with ``ohem``, on
the hardest labeled pixels (the UniMatch V2 release's labeled-only Cityscapes runs: supervised.py
builds its ``criterion`` from the config, OHEM for Cityscapes)."""
from __future__ import annotations

import torch.nn.functional as F

from seg_ssl.losses.ohem import ohem_cross_entropy
from seg_ssl.methods.base import Method, ohem_fields


class Supervised(Method):
    name = "supervised"
    config_section = ohem_fields(100000, "hard pixels kept at least, per labeled image")

    def training_step(self, model, labeled: dict, unlabeled: dict | None, iteration: int) -> dict:
        logits = model(labeled["image"])
        c = self.cfg.supervised
        if c.ohem:
            sup = ohem_cross_entropy(logits, labeled["label"], c.ohem_thresh,
                                     c.ohem_min_kept * logits.shape[0], self.ignore_index)
        else:
            sup = F.cross_entropy(logits, labeled["label"], ignore_index=self.ignore_index)
        return {"loss": sup, "sup": sup}
