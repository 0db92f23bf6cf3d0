"""Argument checks and the optional input normalisation shared by the models."""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..nn.normalize import Normalize, Values


def positive_int(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def input_normalization(mean: Optional[Values], std: Optional[Values], in_channels: int) -> nn.Module:
    """Normalize(mean, std) when both are given, else identity (the model sees [0, 1] pixels)."""
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (or neither)")
    if mean is None:
        return nn.Identity()
    layer = Normalize(mean, std)
    if layer.channels not in (1, in_channels):
        raise ValueError(f"mean and std must have 1 or in_channels={in_channels} values, got {layer.channels}")
    return layer
