"""Non-local-means feature denoising (Xie et al., CVPR 2019) in plain PyTorch.

Layout: every op takes feature maps channels-first, (B, d, H, W) or flattened (B, d, N) with
N = H * W positions: theta and phi (queries and keys) of width d, g (values) of width C.

    nlm_gaussian  y_i = sum_j softmax_j(scale * theta_i . phi_j) g_j      (materialised N x N)
    nlm_gaussian_sdpa  the same maths through F.scaled_dot_product_attention (padded widths)
    nlm_dot       y_i = (1/N) sum_j (theta_i . phi_j) g_j                  (materialised N x N)
    mean3x3       3x3 average, stride 1, same padding; padded cells are not counted
                  (TensorFlow's SAME average pooling, which the original code uses)
    median3x3     see fastrobust.reference.median
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._checks.nlm import check_nlm_args, default_scale

from .median import median3x3  # noqa: F401  (re-exported: one module for every NLM variant)


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
    """The same maths through F.scaled_dot_product_attention, in the form its fused kernels
    accept: one head, (B, 1, N, D) contiguous, the query/key width d and the value width C
    zero-padded to a common D = max(d, C) rounded up to 8 (zero columns add nothing to the
    logits; y drops the padded channels). y has g's shape, contiguous."""
    check_nlm_args(theta, phi, g)
    scale = default_scale(theta, scale)
    q, k, v = flatten(theta, phi, g)
    width = -(-max(q.shape[1], v.shape[1], 1) // 8) * 8

    def heads(t: torch.Tensor) -> torch.Tensor:  # (B, w, N) -> (B, 1, N, width), zero-padded
        return F.pad(t.transpose(1, 2), (0, width - t.shape[1])).unsqueeze(1).contiguous()

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=scale)
    return out.squeeze(1)[:, :, :v.shape[1]].transpose(1, 2).reshape(g.shape).contiguous()


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
