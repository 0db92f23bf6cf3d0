"""The minimal step onto a hyperplane inside a box, in the L-inf, L2 or L1 norm: FAB's projection.

For rows t (n, D), normals w (n, D) and offsets b (n,), each row's step d solves

    minimise ||d||_p  subject to  w.(t + d) = b  and  lo <= t + d <= hi,

and where no point of the box reaches the hyperplane, d is the box corner that comes closest
(the most negative w.(t + d) - b once the side is fixed). The sign of w is first chosen so
that t lies on the positive side, c = w.t - b >= 0; then every coordinate moves against
sign(w_i), by at most its room in the box, cap_i (t_i - lo for w_i > 0, hi - t_i for
w_i < 0), and the constraint reads sum_i |w_i| |d_i| = c. The solutions, one sort per row:

    L-inf:  |d_i| = min(lam, cap_i), lam where the sum reaches c (caps sorted ascending);
    L2:     |d_i| = min(a |w_i|, cap_i), a where the sum reaches c (breakpoints cap_i / |w_i|);
    L1:     the coordinates of largest |w_i| first, each moved to its cap until c is reached,
            the last one part of the way.

Coordinates with w_i = 0 (L2, L1: |w_i| <= 1e-8, as AutoAttack's FAB) do not move.
fastrobust.reference.fab has the same projections by bisection and by a loop over coordinates.
"""
from __future__ import annotations

import torch

_FLAT = {"linf": 0.0, "l2": 1e-8, "l1": 1e-8}  # |w_i| at or below this: the coordinate stays
_FAR = 1e30  # a breakpoint beyond every reachable one (kept finite: far * 0 must be 0)


def hyperplane_step(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str, lo: float, hi: float) -> torch.Tensor:
    """The step d (n, D) from each row of t onto its hyperplane {z: w.z = b} within [lo, hi]^D
    that is smallest in `norm` ("linf", "l2", "l1"); see the module docstring."""
    c = (w * t).sum(1) - b
    side = torch.where(c >= 0, 1.0, -1.0).to(w.dtype)
    w = w * side[:, None]
    c = c * side
    moves = w.abs() > _FLAT[norm]
    weight = torch.where(moves, w.abs(), torch.zeros_like(w))
    cap = torch.where(w > 0, t - lo, hi - t).clamp(min=0)
    direction = -torch.sign(w) * moves
    if norm == "linf":
        size = _linf_sizes(weight, cap, c)
    elif norm == "l2":
        size = _l2_sizes(weight, cap, c)
    elif norm == "l1":
        size = _l1_sizes(weight, cap, c)
    else:
        raise ValueError(f"norm must be 'linf', 'l2' or 'l1', got {norm!r}")
    return direction * size


def _segment(at_break: torch.Tensor, ws: torch.Tensor, c: torch.Tensor):
    """(k, corner): k (n, 1) how many of the sorted breakpoints of the moving coordinates the
    constraint sum passes before it reaches c (it is nondecreasing, so k indexes the segment
    that holds the solution); corner: it passes all of them (the box does not reach c)."""
    moving = ws > 0
    k = (moving & (at_break <= c[:, None])).sum(1, keepdim=True)
    return k, k >= moving.sum(1, keepdim=True)


def _linf_sizes(weight: torch.Tensor, cap: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """|d_i| = min(lam, cap_i) with sum_i weight_i min(lam, cap_i) = c."""
    caps, order = cap.masked_fill(weight == 0, _FAR).sort(dim=1, stable=True)
    ws = weight.gather(1, order)
    below = torch.cumsum(ws * caps.masked_fill(ws == 0, 0), 1)  # saturated part up to k (inclusive)
    rest = (ws.sum(1, keepdim=True) - torch.cumsum(ws, 1)).clamp(min=0)  # weight still growing after k
    at_break = below + caps * rest  # the sum at lam = caps_k
    k, corner = _segment(at_break, ws, c)
    lam = _solve_segment(c, below, rest, ws.sum(1, keepdim=True), k, corner)
    return torch.minimum(lam, cap)


def _l2_sizes(weight: torch.Tensor, cap: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """|d_i| = min(a weight_i, cap_i) with sum_i weight_i min(a weight_i, cap_i) = c."""
    breaks = torch.where(weight > 0, cap / weight.clamp(min=1e-30), torch.full_like(cap, _FAR)).clamp(max=_FAR)
    keys, order = breaks.sort(dim=1, stable=True)
    ws, cs = weight.gather(1, order), cap.gather(1, order)
    below = torch.cumsum(ws * cs, 1)
    square = ws * ws
    rest = (square.sum(1, keepdim=True) - torch.cumsum(square, 1)).clamp(min=0)
    at_break = below + keys * rest
    k, corner = _segment(at_break, ws, c)
    a = _solve_segment(c, below, rest, square.sum(1, keepdim=True), k, corner)
    return torch.where(weight > 0, torch.minimum(a * weight, cap), torch.zeros_like(cap))  # inf * 0 is no size


def _solve_segment(c, below, rest, total, k, corner) -> torch.Tensor:
    """The multiplier on segment k: (c - saturated part before k) / (growing weight from k);
    infinite where every breakpoint is passed (the corner) or nothing can grow."""
    before = torch.where(k > 0, below.gather(1, (k - 1).clamp(min=0)), torch.zeros_like(c[:, None]))
    growing = torch.where(k > 0, rest.gather(1, (k - 1).clamp(min=0)), total)
    inf = torch.full_like(growing, float("inf"))
    value = torch.where(~corner & (growing > 0), (c[:, None] - before) / growing.where(growing > 0, 1), inf)
    return value.clamp(min=0)


def _l1_sizes(weight: torch.Tensor, cap: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The coordinates of largest weight first, each to its cap, until sum weight_i |d_i| = c."""
    ws, order = weight.sort(dim=1, descending=True, stable=True)
    cs = cap.gather(1, order)
    gain = torch.cumsum(ws * cs, 1)
    k = (gain < c[:, None]).sum(1, keepdim=True)  # the coordinate (in this order) that moves part of its cap
    full = torch.arange(weight.shape[1], device=weight.device)[None, :] < k
    partial_index = k.clamp(max=weight.shape[1] - 1)
    before = torch.where(k > 0, gain.gather(1, (k - 1).clamp(min=0)), torch.zeros_like(k, dtype=gain.dtype))
    w_k = ws.gather(1, partial_index)
    part = ((c[:, None] - before) / w_k.where(w_k > 0, 1)).where(w_k > 0, 0.0)
    sorted_sizes = torch.where(full, cs, torch.zeros_like(cs))
    sorted_sizes.scatter_(1, partial_index, torch.where(k < weight.shape[1], torch.minimum(part, cs.gather(1, partial_index)),
                                                        sorted_sizes.gather(1, partial_index)))
    return torch.empty_like(sorted_sizes).scatter_(1, order, sorted_sizes)
