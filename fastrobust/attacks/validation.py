"""Argument checks of the attacks; every error is a ValueError that names the argument."""
from __future__ import annotations

import numbers
from typing import NamedTuple, Optional, Union

import torch
from torch import nn

Scalar = Union[float, torch.Tensor]
AUTOCAST_DTYPES = (None, torch.bfloat16, torch.float16)


def check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_radius(value: Scalar, name: str) -> Scalar:
    """eps / alpha: a number >= 0, or a floating 1-D tensor of values >= 0 (one per sample)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.dim() > 1:
            raise ValueError(f"{name} must be a number or a floating-point 1-D tensor, got {value.dtype} "
                             f"of shape {tuple(value.shape)}")
        if bool((value.detach() < 0).any() or value.detach().isnan().any()):
            raise ValueError(f"{name} must be >= 0 everywhere")
        return value.detach().reshape(-1)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(value, choices, name: str):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_restart_batch(value):
    """restart_batch: "auto" (one group per pass on the CPU, all groups in one pass on a GPU),
    None (all in one pass) or an integer >= 1."""
    if value == "auto" or value is None:
        return value
    return check_count(value, "restart_batch", 1)


def check_early_stop(value):
    """early_stop: True, False or "auto" (see Attack._stops_early)."""
    if value != "auto" and not isinstance(value, bool):
        raise ValueError(f"early_stop must be True, False or 'auto', got {value!r}")
    return value


def check_targets_match(targeted: bool, targets, attack: str) -> None:
    """targets given exactly when the attack was constructed targeted."""
    if targeted and targets is None:
        raise ValueError(f"targets: a targeted {attack} needs targets=...")
    if not targeted and targets is not None:
        raise ValueError(f"targets: given to an untargeted {attack} (construct it with targeted=True)")


def check_autocast(dtype) -> Optional[torch.dtype]:
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {dtype!r}")
    return dtype


def check_box(lo: float, hi: float) -> None:
    if not float(lo) <= float(hi):
        raise ValueError(f"lo must be <= hi, got lo={lo!r}, hi={hi!r}")


def _check_labels(t: torch.Tensor, name: str, n: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64:
        raise ValueError(f"{name} must be an int64 tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one label per row of x), got {tuple(t.shape)}")


class CheckedCall(NamedTuple):
    """An attack call's labels on x's device, and the number of classes they need (the largest
    label + 1; the model's logits are checked against it, see ModelRunner)."""

    y: torch.Tensor
    targets: Optional[torch.Tensor]
    classes_needed: int


def check_call(x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor], lo: float, hi: float
               ) -> CheckedCall:
    """Checks one attack call's inputs: x a floating batch inside [lo, hi], y and targets int64
    labels >= 0, one per row. The range checks of x and of the labels are the one host
    synchronisation an attack makes before its loop."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension and at least one feature dimension, "
                         f"got shape {tuple(x.shape)}")
    _check_labels(y, "y", x.shape[0])
    if targets is not None:
        _check_labels(targets, "targets", x.shape[0])
    y = y.to(x.device)
    targets = None if targets is None else targets.to(x.device)
    if x.numel() == 0:
        return CheckedCall(y, targets, 0)
    labels = y if targets is None else torch.cat([y, targets])
    outside = ((x < lo) | (x > hi) | x.isnan()).any()
    bad_x, smallest, largest = torch.stack([outside.to(torch.int64), labels.min(), labels.max()]).tolist()
    if bad_x:
        raise ValueError(f"x must lie in [lo, hi] = [{lo}, {hi}] (normalisation belongs inside the model)")
    if smallest < 0:
        name = "y" if bool((y < 0).any()) else "targets"
        raise ValueError(f"{name} must be class indices >= 0, got {smallest}")
    return CheckedCall(y, targets, int(largest) + 1)


def check_per_sample(value: Scalar, name: str, n: int) -> None:
    if isinstance(value, torch.Tensor) and value.numel() not in (1, n):
        raise ValueError(f"{name} must have 1 or {n} values (one per sample), got {value.numel()}")
