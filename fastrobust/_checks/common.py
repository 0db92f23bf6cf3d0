"""Checks of tensors, devices and numbers that every op uses."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch


def require_tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_same_device(ref_name: str, ref: torch.Tensor, **tensors: Optional[torch.Tensor]) -> None:
    """Every given tensor is on ref's device. Checked before dispatch: a tensor on the meta
    device among real ones would send the call to the fake kernel, which computes nothing."""
    for name, t in tensors.items():
        # A plain raise, not torch._check: dynamo traces it (devices are constants there), and it
        # raises RuntimeError as the C++ checks do.
        if t is not None and t.device != ref.device:
            raise RuntimeError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def real_number(value, name: str, minimum: Optional[float] = None, inclusive: bool = True,
                finite: bool = True) -> float:
    """value as a float: a real number (Python, NumPy, or a tensor holding one value), finite
    unless finite=False, and >= minimum (> with inclusive=False)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be a real number, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        if value.device.type == "meta":
            raise ValueError(f"{name} must be a real number, got a tensor on the meta device (it holds no value)")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and not (value >= minimum if inclusive else value > minimum):
        raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {minimum:g}, got {value:g}")
    return value


def check_class_indices(labels: torch.Tensor, classes: int, name: str) -> None:
    """labels: int64 (N,) class indices in [0, classes). On the CPU the values are read here;
    on an accelerator an asynchronous device-side assert checks them (no host sync), as the
    CUDA kernels do; meta tensors hold no values."""
    if labels.dtype != torch.int64:
        raise ValueError(f"{name} must be int64, got {labels.dtype}")
    if labels.numel() == 0 or labels.device.type == "meta":
        return
    if labels.device.type == "cpu" and not torch.compiler.is_compiling():
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= classes:
            raise ValueError(f"{name} must be class indices in [0, {classes}), got values in [{lo}, {hi}]")
        return
    torch._assert_async(((labels >= 0) & (labels < classes)).all(),
                        f"{name} must be class indices in [0, {classes})")
