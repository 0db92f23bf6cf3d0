"""Checks of median3x3(x) and its backward."""
from __future__ import annotations

import torch

from .common import check_same_device, require_tensor


def check_median_args(x: torch.Tensor) -> None:
    """Raises RuntimeError with a message naming the argument, as the C++ kernels do."""
    require_tensor(x, "x")
    torch._check(x.dim() == 4, lambda: f"x must be a 4-D tensor, got {x.dim()}-D with shape {tuple(x.shape)}")
    torch._check(x.dtype.is_floating_point, lambda: f"x must have a floating-point dtype, got {x.dtype}")


def check_median_backward_args(grad_y: torch.Tensor, arg: torch.Tensor) -> None:
    """The checks of the backward op `_median3x3_backward(grad_y, arg)` (the kernels also check
    that arg holds window positions, 0..8)."""
    require_tensor(grad_y, "grad_y")
    require_tensor(arg, "arg")
    torch._check(grad_y.dim() == 4, lambda: f"grad_y must be a 4-D tensor, got {grad_y.dim()}-D with shape "
                                            f"{tuple(grad_y.shape)}")
    torch._check(grad_y.dtype.is_floating_point,
                 lambda: f"grad_y must have a floating-point dtype, got {grad_y.dtype}")
    torch._check(arg.dtype == torch.uint8, lambda: f"arg must have dtype uint8 (the window positions median3x3 "
                                                   f"returns), got {arg.dtype}")
    check_same_device("grad_y", grad_y, arg=arg)
    torch._check(grad_y.shape == arg.shape, lambda: f"grad_y must have the shape of arg ({tuple(arg.shape)}), got "
                                                    f"{tuple(grad_y.shape)}")
