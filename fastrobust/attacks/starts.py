"""Starting points of the attack loops; each returns a new iterate in the rows' memory layout.

Random numbers are always drawn in the contiguous layout and then copied into the rows'
layout, so channels_last and contiguous runs start from the same points.
"""
from __future__ import annotations

import torch

from ..ops import pgd_random_init_, pgd_step_
from .l1_ball import uniform_l1_start
from .rows import Rows


def _in_layout_of(ref: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t if t.stride() == ref.stride() else torch.empty_like(ref).copy_(t)


def clean_start(rows: Rows) -> torch.Tensor:
    return rows.x0.clone()


def uniform_start(rows: Rows, norm: str, lo: float, hi: float) -> torch.Tensor:
    """Uniform in the eps-ball, box-clipped (pgd_random_init_): torchattacks' / Madry's start.
    Its Philox stream is keyed by the call's seed and, as offset, the rows' first group.
    L1: uniform in the L1 ball (l1_ball.uniform_l1_start, from the rows' generator)."""
    if norm == "l1":
        return uniform_l1_start(rows.x0, rows.eps, lo, hi, rows.generator)
    x0 = rows.x0.contiguous()
    x = torch.empty_like(x0)
    pgd_random_init_(x, x0, rows.eps, norm, lo, hi, seed=rows.seed, offset=rows.first_group)
    return _in_layout_of(rows.x0, x)


def gaussian_start(rows: Rows, sigma: float, norm: str, lo: float, hi: float) -> torch.Tensor:
    """x0 + sigma*N(0, 1), projected onto the eps-ball and the box (a zero-gradient pgd_step_
    whose noise term is the Gaussian draw): the hypocritical / TRADES start."""
    noise = sigma * torch.randn(rows.x0.shape, generator=rows.generator, device=rows.x0.device, dtype=rows.x0.dtype)
    x = rows.x0.clone()
    return pgd_step_(x, rows.x0, torch.zeros_like(x), rows.eps, 0.0, noise=noise, norm=norm, lo=lo, hi=hi)


def vertex_start(rows: Rows, lo: float, hi: float) -> torch.Tensor:
    """x0 + eps*sign(U(-1, 1)), box-clipped: a random vertex of the L-inf ball, the random start
    of Antoniou et al.'s PGD (a pgd_step_ of length eps along a random sign pattern)."""
    direction = torch.rand(rows.x0.shape, generator=rows.generator, device=rows.x0.device) - 0.5
    x = rows.x0.clone()
    return pgd_step_(x, rows.x0, direction.to(x.dtype), rows.eps, rows.eps, norm="linf", lo=lo, hi=hi)


def autoattack_start(rows: Rows, norm: str, lo: float, hi: float) -> torch.Tensor:
    """AutoAttack's APGD start: x0 + eps*t/||t|| with t ~ U(-1, 1) normalised by its row max
    (L-inf: one coordinate lands on the ball's face) or t ~ N(0, I) normalised by its L2 norm
    (L2: on the sphere), then box-clipped."""
    x0 = rows.x0
    shape = (x0.shape[0], *([1] * (x0.dim() - 1)))
    if norm == "linf":
        t = 2 * torch.rand(x0.shape, generator=rows.generator, device=x0.device) - 1
        scale = t.abs().reshape(x0.shape[0], -1).amax(dim=1)
    else:
        t = torch.randn(x0.shape, generator=rows.generator, device=x0.device)
        scale = (t ** 2).reshape(x0.shape[0], -1).sum(dim=1).sqrt()  # AutoAttack's rounding, not norm()
    # As AutoAttack: the draw is normalised in float32, then scaled by eps in x's dtype.
    unit = (t / (scale.reshape(shape) + 1e-12)).to(x0.dtype)
    return _in_layout_of(x0, (x0 + rows.eps.to(x0.dtype).reshape(-1, *shape[1:]) * unit).clamp(lo, hi))

