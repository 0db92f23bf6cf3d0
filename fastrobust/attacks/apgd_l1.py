"""APGD-L1 (Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks", ICCV 2021), as
in AutoAttack's APGDAttack with norm="L1": the pass that APGD runs for norm="l1".

Each iteration moves along the sign of the largest-magnitude fraction `topk` of the gradient's
coordinates, normalised to L1 length `step`, and projects onto the L1 ball intersected with
the box (l1_ball.project_l1_box); no momentum. Every k = max(int(0.04 steps), 1) iterations the
sparsity of the best point so far sets the next topk (its L0 / dims / 1.5), and where it
shrank by 5 % or more the step returns to eps and the iterate to the best point, elsewhere
the step shrinks by 1.5 (within [eps / 10, eps]). The first topk is 0.2 from a random start
(x0 + N(0, I), projected), or the start's own sparsity when the pass is given a start.

eps_schedule (AutoAttack's use_largereps): three stages at 3 eps, 2 eps and eps, with 30 %,
30 % and the rest of the iterations, each starting from the previous stage's highest-loss
point projected onto its ball; only the last stage's successes count.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .apgd_state import APGDState, Retirement
from .l1_ball import project_l1_box
from .rows import RowOutcome, Rows, expand_rows, maths_dtype, row_mask

_SPARSER = 0.95  # sparsity ratio below which a checkpoint restarts from the best point
_TOPK_SHRINK = 1.5  # topk = L0 / dims / 1.5, and the step's decay
_STEP_FLOOR = 10.0  # the step never falls below eps / 10


def eps_stages(steps: int) -> List[Tuple[float, int]]:
    """(eps multiple, iterations) of the eps_schedule stages for `steps` iterations in all."""
    first, second = math.ceil(0.3 * steps), math.ceil(0.3 * steps)
    return [(3.0, first), (2.0, second), (1.0, steps - first - second)]


def _in_layout(ref: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t.to(ref.dtype) if t.stride() == ref.stride() else torch.empty_like(ref).copy_(t)


def _l0(delta: torch.Tensor) -> torch.Tensor:
    return (delta != 0).flatten(1).sum(1).to(maths_dtype(delta))


class L1Pass:
    """One APGD-L1 pass over `rows` (all their groups at once): run(ctx, start) -> RowOutcome."""

    def __init__(self, attack, rows: Rows, loss_fn):
        self.attack, self.rows, self.loss_fn = attack, rows, loss_fn
        self.lo, self.hi = attack.lo, attack.hi

    def project(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x projected onto the eps L1 ball around the rows' clean points, within the box."""
        x0 = self.rows.x0
        dtype = maths_dtype(x0)
        delta = (x - x0).to(dtype)
        delta = project_l1_box(x0.to(dtype), delta, eps, self.lo, self.hi)
        return _in_layout(x0, x0.to(dtype) + delta)

    def random_start(self, eps: torch.Tensor) -> torch.Tensor:
        x0 = self.rows.x0
        noise = torch.randn(x0.shape, generator=self.rows.generator, device=x0.device, dtype=maths_dtype(x0))
        return self.project(x0 + noise.to(x0.dtype), eps)

    def run(self, ctx, eps: torch.Tensor, steps: int, start: Optional[torch.Tensor],
            stop_early: bool = False) -> Tuple[RowOutcome, Optional[torch.Tensor]]:
        """(outcome, highest-loss point) of `steps` iterations at radius eps (per row or one).
        stop_early: rows leave at their first success (APGD's early_stop); the highest-loss
        point is then not returned (None)."""
        rows, attack = self.rows, self.attack
        x0, n = rows.x0, rows.n
        dims = x0.shape[1:].numel()
        x = self.random_start(eps) if start is None else self.project(start, eps)
        logits, loss, grad = attack._loss_and_grad(ctx, x, self.loss_fn)
        ctx.count(n * attack.eot_iter, backward=True)
        state = APGDState(rows, x, loss, grad, rows.reached(logits))
        radius = expand_rows(eps, n, maths_dtype(x0))
        step = radius.clone()
        if start is None:
            topk = torch.full((n,), 0.2, dtype=radius.dtype, device=x0.device)
            sparsity = torch.full_like(topk, float(dims))
        else:
            sparsity = _l0(x - x0)
            topk = sparsity / dims / _TOPK_SHRINK
        interval = max(int(0.04 * steps), 1)
        retired = Retirement(state) if stop_early else None
        for i in range(steps):
            if retired is not None and bool(state.success.any()):
                rows, stay = retired.retire(state, rows, state.success)
                self.rows, self.loss_fn = rows, rows.loss_fn(attack.loss)
                radius, step, topk, sparsity = (t[stay] for t in (radius, step, topk, sparsity))
                eps = eps if eps.numel() == 1 else eps[stay]
                x0, n = rows.x0, rows.n
                if n == 0:
                    break
            state.x = self.project(self._sparse_step(state.x, state.grad, step, topk, dims), eps)
            logits, loss, grad = attack._loss_and_grad(ctx, state.x, self.loss_fn)
            ctx.count(n * attack.eot_iter, backward=True)
            state.record(loss, grad, rows.reached(logits))
            if (i + 1) % interval == 0:
                current = _l0(state.x_best - x0)
                sparser = current / sparsity.clamp(min=1) < _SPARSER
                topk = current / dims / _TOPK_SHRINK
                step = torch.where(sparser, radius, step / _TOPK_SHRINK)
                step = torch.minimum(torch.maximum(step, radius / _STEP_FLOOR), radius)
                sparsity = current
                state.x = torch.where(row_mask(sparser, state.x), state.x_best, state.x)
                state.grad = torch.where(row_mask(sparser, state.grad), state.grad_best, state.grad)
        if retired is not None:
            return RowOutcome(*retired.result(state)), None
        return RowOutcome(state.x_out, state.loss_out, state.success, state.nonfinite), state.x_best

    @staticmethod
    def _sparse_step(x: torch.Tensor, grad: torch.Tensor, step: torch.Tensor, topk: torch.Tensor,
                     dims: int) -> torch.Tensor:
        """x + step * sign(g_top) / ||sign(g_top)||_1, g_top the coordinates of g at or above the
        row's (1 - topk) quantile of |g|."""
        magnitude = grad.flatten(1).abs()
        rank = ((1 - topk) * dims).clamp(0, dims - 1).long()
        threshold = magnitude.sort(dim=1)[0].gather(1, rank[:, None])
        direction = torch.sign(grad.flatten(1)) * (magnitude >= threshold)
        length = direction.abs().sum(1, keepdim=True) + 1e-10
        moved = x.flatten(1).to(step.dtype) + step[:, None] * direction.to(step.dtype) / length
        return moved.reshape(x.shape)


def run_l1(attack, ctx, rows: Rows, loss_fn) -> RowOutcome:
    """APGD's pass for norm="l1": one run, or the eps_schedule's three stages (early_stop in
    the last one only: successes at the larger radii do not count)."""
    l1 = L1Pass(attack, rows, loss_fn)
    stop_early = attack._stops_early(ctx, rows)
    if not attack.eps_schedule:
        return l1.run(ctx, rows.eps, attack.steps, None, stop_early)[0]
    stages = eps_stages(attack.steps)
    start = l1.random_start(rows.eps * stages[0][0])
    outcome = None
    for k, (factor, steps) in enumerate(stages):
        outcome, start = l1.run(ctx, rows.eps * factor, steps, start, stop_early and k == len(stages) - 1)
    return outcome
