"""Checks of sparta(x, weight, bias) and its backward."""
from __future__ import annotations

import torch

from .common import check_same_device, require_tensor


def check_sparta_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Raises with a message naming the argument, as the C++ kernels do."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        require_tensor(t, name)
    torch._check(x.dim() == 4, lambda: f"x must be a 4-D tensor, got {x.dim()}-D with shape {tuple(x.shape)}")
    torch._check(x.dtype.is_floating_point, lambda: f"x must have a floating-point dtype, got {x.dtype}")
    torch._check(weight.dim() == 4, lambda: f"weight must be a 4-D tensor, got {weight.dim()}-D with shape {tuple(weight.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        torch._check(t.dtype == x.dtype, lambda: f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    check_same_device("x", x, weight=weight, bias=bias)
    c, k = x.shape[1], weight.shape[2]
    torch._check(
        weight.shape[0] == c and weight.shape[1] == 1 and weight.shape[3] == k,
        lambda: f"weight must have shape (C, 1, k, k) = ({c}, 1, k, k) for x with {c} channels, got {tuple(weight.shape)}",
    )
    torch._check(k % 2 == 1, lambda: f"weight: kernel size must be odd (same padding k//2), got {k}")
    torch._check(tuple(bias.shape) == (c,), lambda: f"bias must have shape ({c},), got {tuple(bias.shape)}")


def check_sparta_backward_args(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                               bias: torch.Tensor) -> None:
    check_sparta_args(x, weight, bias)
    require_tensor(grad_y, "grad_y")
    check_same_device("x", x, grad_y=grad_y)
    torch._check(grad_y.shape == x.shape,
                 lambda: f"grad_y must have the shape of x {tuple(x.shape)}, got {tuple(grad_y.shape)}")
