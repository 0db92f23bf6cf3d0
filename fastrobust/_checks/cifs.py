"""Checks of cifs_reweight(feat, relevance, temperature, scale) and of the CIFS class targets."""
from __future__ import annotations

import math

import torch

from .common import check_class_indices, check_same_device, real_number, require_tensor


def check_reweight_args(feat: torch.Tensor, relevance: torch.Tensor, temperature: float,
                        scale: float = 1.0) -> None:
    require_tensor(feat, "feat")
    require_tensor(relevance, "relevance")
    if feat.dim() != 4:
        raise ValueError(f"feat must be a 4-D (B, C, H, W) tensor, got shape {tuple(feat.shape)}")
    if not feat.is_floating_point() or not relevance.is_floating_point():
        raise ValueError(f"feat and relevance must be floating-point, got {feat.dtype} and {relevance.dtype}")
    if relevance.shape != feat.shape[:2]:
        raise ValueError(f"relevance must have shape (B, C) = {tuple(feat.shape[:2])}, got {tuple(relevance.shape)}")
    check_same_device("feat", feat, relevance=relevance)
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    real_number(scale, "scale")


def check_probe_labels(probe_logits: torch.Tensor, labels: torch.Tensor) -> None:
    """labels of a CIFS layer in train mode: int64 (B,) class indices of the probe's K classes."""
    require_tensor(labels, "labels")
    if labels.dtype != torch.int64 or labels.shape != (probe_logits.shape[0],):
        raise ValueError(f"labels must be int64 of shape ({probe_logits.shape[0]},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    check_same_device("probe_logits", probe_logits, labels=labels)
    check_class_indices(labels, probe_logits.shape[1], "labels")
