"""Non-local-means feature denoising (Xie et al., CVPR 2019) in plain PyTorch.

Layout: every op takes feature maps channels-first, (B, d, H, W) or flattened (B, d, N) with
N = H * W positions: theta and phi (queries and keys) of width d, g (values) of width C.

    nlm_gaussian  y_i = sum_j softmax_j(scale * theta_i . phi_j) g_j      (materialised N x N)
    nlm_gaussian_sdpa  the same maths through F.scaled_dot_product_attention
    nlm_dot       y_i = (1/N) sum_j (theta_i . phi_j) g_j                  (materialised N x N)
    mean3x3       3x3 average, stride 1, same padding; padded cells are not counted
                  (TensorFlow's SAME average pooling, which the original code uses)
    median3x3     see fastrobust.reference.median
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .median import median3x3  # noqa: F401  (re-exported: one module for every NLM variant)


def check_nlm_args(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> None:
    """Raises with a message naming the argument, as the C++ kernels do."""
    for name, t in (("theta", theta), ("phi", phi), ("g", g)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    torch._check(theta.dim() in (3, 4), lambda: f"theta must be a 3-D (B, d, N) or 4-D (B, d, H, W) tensor, got "
                                                f"{theta.dim()}-D with shape {tuple(theta.shape)}")
    torch._check(theta.dtype.is_floating_point, lambda: f"theta must have a floating-point dtype, got {theta.dtype}")
    for name, t in (("phi", phi), ("g", g)):
        torch._check(t.dim() == theta.dim(), lambda: f"{name} must have the rank of theta ({theta.dim()}-D), got "
                                                     f"{t.dim()}-D with shape {tuple(t.shape)}")
        torch._check(t.dtype == theta.dtype, lambda: f"{name} must have the dtype of theta ({theta.dtype}), got {t.dtype}")
        torch._check(t.device == theta.device,
                     lambda: f"{name} must be on the device of theta ({theta.device}), got {t.device}")
        torch._check(t.shape[0] == theta.shape[0], lambda: f"{name} must have the batch size of theta "
                                                           f"({theta.shape[0]}), got {t.shape[0]}")
        torch._check(t.shape[2:] == theta.shape[2:], lambda: f"{name} must have the positions of theta "
                                                             f"{tuple(theta.shape[2:])}, got {tuple(t.shape[2:])}")
    torch._check(phi.shape[1] == theta.shape[1], lambda: f"phi must have the width d of theta ({theta.shape[1]}), "
                                                         f"got {phi.shape[1]}")


def default_scale(theta: torch.Tensor, scale: Optional[float]) -> float:
    """1/sqrt(d) unless given (d = theta's channels)."""
    if scale is None:
        return 1.0 / math.sqrt(max(theta.shape[1], 1))
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def flatten(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, d, N), (B, d, N), (B, C, N) views or copies of the three inputs."""
    b, n = theta.shape[0], positions(theta)
    return theta.reshape(b, theta.shape[1], n), phi.reshape(b, phi.shape[1], n), g.reshape(b, g.shape[1], n)


def positions(t: torch.Tensor) -> int:
    """N: the number of positions of a (B, width, ...) map."""
    n = 1
    for s in t.shape[2:]:
        n *= s
    return n


def nlm_affinity_logits(theta: torch.Tensor, phi: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, N, N) logits scale * theta_i . phi_j of flattened inputs."""
    return scale * torch.bmm(theta.transpose(1, 2), phi)


def nlm_gaussian(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """Softmax non-local means, materialising the (B, N, N) affinity; y has g's shape."""
    check_nlm_args(theta, phi, g)
    scale = default_scale(theta, scale)
    q, k, v = flatten(theta, phi, g)
    weights = torch.softmax(nlm_affinity_logits(q, k, scale), dim=-1)  # (B, N_query, N_key)
    return torch.bmm(v, weights.transpose(1, 2)).reshape(g.shape)


def nlm_gaussian_sdpa(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor,
                      scale: Optional[float] = None) -> torch.Tensor:
    """The same maths through F.scaled_dot_product_attention (one head, value width C)."""
    check_nlm_args(theta, phi, g)
    scale = default_scale(theta, scale)
    q, k, v = flatten(theta, phi, g)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2).reshape(g.shape)


def nlm_dot(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Dot-product non-local means, materialising the (B, N, N) affinity; y has g's shape."""
    check_nlm_args(theta, phi, g)
    q, k, v = flatten(theta, phi, g)
    n = max(q.shape[2], 1)
    return (torch.bmm(v, nlm_affinity_logits(q, k, 1.0).transpose(1, 2)) / n).reshape(g.shape)


def mean3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 average, stride 1, same padding; border cells average the in-image neighbours only."""
    torch._check(x.dim() == 4, lambda: f"x must be a 4-D tensor, got {x.dim()}-D with shape {tuple(x.shape)}")
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
