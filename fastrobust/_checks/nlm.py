"""Checks of the non-local-means ops nlm_gaussian(theta, phi, g, scale) and nlm_dot."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .common import check_same_device, real_number, require_tensor


def check_nlm_args(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> None:
    """Raises with a message naming the argument, as the C++ kernels do."""
    for name, t in (("theta", theta), ("phi", phi), ("g", g)):
        require_tensor(t, name)
    torch._check(theta.dim() in (3, 4), lambda: f"theta must be a 3-D (B, d, N) or 4-D (B, d, H, W) tensor, got "
                                                f"{theta.dim()}-D with shape {tuple(theta.shape)}")
    torch._check(theta.dtype.is_floating_point, lambda: f"theta must have a floating-point dtype, got {theta.dtype}")
    check_same_device("theta", theta, phi=phi, g=g)
    for name, t in (("phi", phi), ("g", g)):
        torch._check(t.dim() == theta.dim(), lambda: f"{name} must have the rank of theta ({theta.dim()}-D), got "
                                                     f"{t.dim()}-D with shape {tuple(t.shape)}")
        torch._check(t.dtype == theta.dtype, lambda: f"{name} must have the dtype of theta ({theta.dtype}), got {t.dtype}")
        torch._check(t.shape[0] == theta.shape[0], lambda: f"{name} must have the batch size of theta "
                                                           f"({theta.shape[0]}), got {t.shape[0]}")
        torch._check(t.shape[2:] == theta.shape[2:], lambda: f"{name} must have the positions of theta "
                                                             f"{tuple(theta.shape[2:])}, got {tuple(t.shape[2:])}")
    torch._check(phi.shape[1] == theta.shape[1], lambda: f"phi must have the width d of theta ({theta.shape[1]}), "
                                                         f"got {phi.shape[1]}")


def default_scale(theta: torch.Tensor, scale: Optional[float]) -> float:
    """1/sqrt(d) unless given (d = theta's channels); a given scale must be a finite number."""
    if scale is None:
        return 1.0 / math.sqrt(max(theta.shape[1], 1))
    return real_number(scale, "scale")
