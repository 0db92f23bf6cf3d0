"""Sparta-style spatially gated ReLU, as an eager composition of PyTorch ops.

    y = relu(x) * 2 * sigmoid(dwconv_k(x) + b)

with a depthwise k x k kernel (C, 1, k, k), odd k, zero padding k // 2 and a per-channel
bias (C,). This is fastrobust's own definition of a Sparta-style activation: the paper's
exact formula (Guo et al., arXiv 2105.08269) was not available to us.
"""
import torch
import torch.nn.functional as F


def check_sparta_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Raises with a message naming the argument, as the C++ kernels do."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    torch._check(x.dim() == 4, lambda: f"x must be a 4-D tensor, got {x.dim()}-D with shape {tuple(x.shape)}")
    torch._check(x.dtype.is_floating_point, lambda: f"x must have a floating-point dtype, got {x.dtype}")
    torch._check(weight.dim() == 4, lambda: f"weight must be a 4-D tensor, got {weight.dim()}-D with shape {tuple(weight.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        torch._check(t.dtype == x.dtype, lambda: f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
        torch._check(t.device == x.device, lambda: f"{name} must be on the device of x ({x.device}), got {t.device}")
    c, k = x.shape[1], weight.shape[2]
    torch._check(
        weight.shape[0] == c and weight.shape[1] == 1 and weight.shape[3] == k,
        lambda: f"weight must have shape (C, 1, k, k) = ({c}, 1, k, k) for x with {c} channels, got {tuple(weight.shape)}",
    )
    torch._check(k % 2 == 1, lambda: f"weight: kernel size must be odd (same padding k//2), got {k}")
    torch._check(tuple(bias.shape) == (c,), lambda: f"bias must have shape ({c},), got {tuple(bias.shape)}")


def sparta_gate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The gate sigmoid(dwconv_k(x) + b)."""
    k = weight.shape[-1]
    return torch.sigmoid(F.conv2d(x, weight, bias, padding=k // 2, groups=x.shape[1]))


def sparta(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Reference Sparta forward; autograd gives the backward."""
    check_sparta_args(x, weight, bias)
    return torch.relu(x) * (2 * sparta_gate(x, weight, bias))
