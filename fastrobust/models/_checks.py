"""Argument checks, the optional input normalisation and the denoising option shared by the
models."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

from torch import nn

from ..nn.nlm import MODES, add_denoising_blocks
from ..nn.normalize import Normalize, Values

# (stages, mode, embed) as add_denoising_blocks takes them
DenoiseSpec = Tuple[Union[str, Sequence[str]], str, Optional[bool]]


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


def check_denoise(denoise) -> Optional[DenoiseSpec]:
    """The models' `denoise` option: None (no denoising blocks), or (stages, mode) or
    (stages, mode, embed), stages a stage name ("layer3", or Xie et al.'s "res4") or a list of
    names, mode one of fastrobust.nn.nlm.MODES; returned as (stages, mode, embed). The stage
    names are checked against the model by add_denoising_blocks when the model is built."""
    if denoise is None:
        return None
    if not isinstance(denoise, (tuple, list)) or len(denoise) not in (2, 3):
        raise ValueError("denoise must be None or (stages, mode) (or (stages, mode, embed)), e.g. "
                         f"('layer3', 'gaussian') or (['layer2', 'layer3'], 'median'); got {denoise!r}")
    stages, mode = denoise[0], denoise[1]
    embed = denoise[2] if len(denoise) == 3 else None
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"denoise: mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    if isinstance(stages, (tuple, list)):
        stages = list(stages)
    elif not isinstance(stages, str):
        raise ValueError(f"denoise: stages must be a stage name or a list of names, got {stages!r}")
    return stages, mode, embed


def apply_denoise(model: nn.Module, spec: Optional[DenoiseSpec]) -> None:
    """Puts the denoising blocks of check_denoise's spec into `model` (in place); errors name
    the option."""
    if spec is None:
        return
    stages, mode, embed = spec
    try:
        add_denoising_blocks(model, stages, mode, embed)
    except ValueError as exc:
        raise ValueError(f"denoise: {exc}") from exc


def check_options(num_classes, in_channels, activation, first_stride, denoise) -> Optional[DenoiseSpec]:
    """Checks the options every model takes, before anything is built; returns the denoise
    spec for apply_denoise."""
    from .activations import check_activation

    positive_int(num_classes, "num_classes")
    positive_int(in_channels, "in_channels")
    check_activation(activation)
    positive_int(first_stride, "first_stride")
    return check_denoise(denoise)
