"""Sparta-style spatially gated ReLU, as an eager composition of PyTorch ops.

    y = relu(x) * 2 * sigmoid(dwconv_k(x) + b)

with a depthwise k x k kernel (C, 1, k, k), odd k, zero padding k // 2 and a per-channel
bias (C,). This is fastrobust's own definition of a Sparta-style activation: the paper's
exact formula (Guo et al., arXiv 2105.08269) was not available to us.
"""
import torch
import torch.nn.functional as F

from .._checks.sparta import check_sparta_args


def sparta_gate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The gate sigmoid(dwconv_k(x) + b)."""
    k = weight.shape[-1]
    return torch.sigmoid(F.conv2d(x, weight, bias, padding=k // 2, groups=x.shape[1]))


def sparta(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Reference Sparta forward; autograd gives the backward."""
    check_sparta_args(x, weight, bias)
    return torch.relu(x) * (2 * sparta_gate(x, weight, bias))
