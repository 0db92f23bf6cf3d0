"""The projection onto the intersection of an L1 ball and the input box, one row at a time
by bisection on the shrinkage lam: the oracle of fastrobust.attacks.l1_ball.

delta_i = sign(y_i) clip(|y_i| - lam, 0, room_i) with room_i the box's room in the direction
of y_i, and lam >= 0 the smallest value that brings sum_i |delta_i| to at most eps.
"""
from __future__ import annotations

import torch


def project_l1_box(x: torch.Tensor, y: torch.Tensor, eps: float, lo: float = 0.0, hi: float = 1.0,
                   iterations: int = 200) -> torch.Tensor:
    """delta for one row: x, y of any shape, eps a number (float64 maths)."""
    fx, fy = x.double().flatten(), y.double().flatten()
    room = torch.where(fy >= 0, hi - fx, fx - lo).clamp(min=0)

    def delta(lam: float) -> torch.Tensor:
        return torch.sign(fy) * (fy.abs() - lam).clamp(min=0).minimum(room)

    if float(delta(0.0).abs().sum()) <= eps:
        return delta(0.0).reshape(y.shape)
    low, high = 0.0, float(fy.abs().max())
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (mid, high) if float(delta(mid).abs().sum()) > eps else (low, mid)
    return delta(high).reshape(y.shape)
