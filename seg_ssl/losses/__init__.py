"""Losses as pure functions: tensors in, tensors out."""
from seg_ssl.losses.contrastive import anchor_contrast, directional_contrastive_loss
from seg_ssl.losses.ohem import ohem_cross_entropy

__all__ = ["anchor_contrast", "directional_contrastive_loss", "ohem_cross_entropy"]
