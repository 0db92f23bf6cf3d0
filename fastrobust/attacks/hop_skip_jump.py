"""HopSkipJump: the decision-based attack of Chen, Jordan & Wainwright (IEEE S&P 2020), L2 and L-inf
(sample-by-sample reference: fastrobust.reference.hop_skip_jump).

Only the model's decision is used (is the goal reached at this point?), never a score or a
gradient. From a starting point that reaches the goal (uniform noise in the box, pulled
towards x by a binary search on the segment), each iteration

  1. estimates the gradient direction of the decision at the boundary point from
     `init_evals * sqrt(t)` (at most `max_evals`) random probes at distance delta
     (Monte Carlo: the mean of the probe directions weighted by their centred decisions);
  2. steps along it (L-inf: its sign) by dist / sqrt(t), halving the step until the point
     still reaches the goal (geometric progression);
  3. returns to the boundary by a binary search between x and that point (L2: on the
     segment; L-inf: clipping to a shrinking L-inf ball), to within theta (gamma / d^1.5 for
     L2, gamma / d^2 for L-inf).

The original code's constants (delta 0.1 of the box at the first iteration, then
sqrt(d) theta dist (L2) or d theta dist (L-inf), with dist the distance before the binary
search). All rows run as one batch; the probes of a row are batched too, `max_batch` points
per forward. With a finite eps the result is projected onto the eps-ball at the end.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

from .engine import Attack, Plan, Scalar
from .final_point import evaluate_point, project_onto_ball
from .rows import RowOutcome, Rows, maths_dtype, row_mask
from .objectives import reached
from .validation import check_count, check_targets_match


class HopSkipJump(Attack):
    """HopSkipJump, untargeted or targeted (reach `targets`).

    Args (besides Attack's eps, norm, lo, hi, seed, autocast, channels_last):
      eps:         the ball the result is projected onto at the end (default inf: the
                   smallest perturbation found, unbounded).
      iterations:  gradient-estimate / step / boundary-search rounds (40).
      init_evals:  probes of the first gradient estimate; round t uses init_evals * sqrt(t) (100).
      max_evals:   at most this many probes per estimate (10000).
      gamma:       sets the binary search's precision theta (1.0).
      init_tries:  uniform-noise draws per row to find a starting point (1000).
      max_batch:   points per forward of the gradient estimate (8192).
      targeted:    reach `targets` (given to the call).
    Points that reach the goal when clean are left as they are; a row for which no noise
    draw reaches it stays at x. backwards is always 0.
    """

    def __init__(self, model: nn.Module, eps: Scalar = math.inf, norm="l2", iterations: int = 40,
                 init_evals: int = 100, max_evals: int = 10000, gamma: float = 1.0, init_tries: int = 1000,
                 max_batch: int = 8192, targeted: bool = False, **kwargs):
        if kwargs.get("cuda_graph"):
            raise ValueError("cuda_graph: HopSkipJump takes no gradient steps to capture; leave it False")
        super().__init__(model, eps=eps, norm=norm, **kwargs)
        self.iterations = check_count(iterations, "iterations", 0)
        self.init_evals = check_count(init_evals, "init_evals", 1)
        self.max_evals = check_count(max_evals, "max_evals", 1)
        self.init_tries = check_count(init_tries, "init_tries", 1)
        self.max_batch = check_count(max_batch, "max_batch", 1)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < math.inf:
            raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.targeted = bool(targeted)
        self.goal = "target" if self.targeted else "fooled"

    def _check_targets(self, targets) -> None:
        check_targets_match(self.targeted, targets, "HopSkipJump")

    def _plan(self, ctx, x0, y, targets) -> Plan:
        return self._plan_after_clean_check(ctx, x0, y, targets, "cw")

    # -- decisions -------------------------------------------------------------------------------
    def _reached(self, ctx, rows: Rows, points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Whether each point (of row index[i]) reaches the goal; forwards of at most max_batch."""
        out = []
        for start in range(0, points.shape[0], self.max_batch):
            chunk, which = points[start:start + self.max_batch], index[start:start + self.max_batch]
            logits = ctx.model.logits(chunk.clamp(self.lo, self.hi))
            ctx.count(chunk.shape[0], backward=False)
            targets = None if rows.targets is None else rows.targets[which]
            out.append(reached(rows.goal, logits, rows.y[which], targets))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=points.device)

    # -- one pass --------------------------------------------------------------------------------
    def _run_rows(self, ctx, rows: Rows, evaluate: bool) -> RowOutcome:
        x0, gen = rows.x0, rows.generator
        n = rows.n
        dims = x0[0].numel()
        theta = self.gamma / (dims ** 1.5 if self.norm == "l2" else dims ** 2)
        x = x0.clone()
        todo = torch.arange(n, device=x0.device)  # the plan's clean check left only samples to attack
        start, found = self._starting_points(ctx, rows, todo, gen)
        todo = todo[found]
        if todo.numel() > 0:
            point, dist_before = self._to_boundary(ctx, rows, x0[todo], start[found], todo, theta)
            for t in range(1, self.iterations + 1):
                dist = self._distance(point - x0[todo])
                if t == 1:
                    delta = torch.full_like(dist, 0.1 * (self.hi - self.lo))
                else:
                    delta = (math.sqrt(dims) if self.norm == "l2" else dims) * theta * dist_before
                evals = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
                direction = self._gradient_direction(ctx, rows, point, todo, delta, evals, gen)
                update = direction if self.norm == "l2" else direction.sign()
                step = self._step_size(ctx, rows, point, update, dist / math.sqrt(t), todo)
                moved = (point + row_mask(step, point) * update).clamp(self.lo, self.hi)
                point, dist_before = self._to_boundary(ctx, rows, x0[todo], moved, todo, theta)
            x[todo] = point.to(x.dtype)
        x = project_onto_ball(x0, x, rows.eps, self.norm, self.lo, self.hi)
        return evaluate_point(ctx, rows, x, evaluate)

    def _distance(self, delta: torch.Tensor) -> torch.Tensor:
        flat = delta.flatten(1).to(maths_dtype(delta))
        return flat.norm(dim=1) if self.norm == "l2" else flat.abs().amax(1)

    def _starting_points(self, ctx, rows: Rows, todo: torch.Tensor, gen) -> Tuple[torch.Tensor, torch.Tensor]:
        """Uniform noise in the box that reaches the goal, then pulled towards x by a binary
        search on the segment (to 0.001 of it); `found` marks the rows that got one."""
        x0 = rows.x0[todo]
        noise = torch.zeros_like(x0)
        found = torch.zeros(todo.numel(), dtype=torch.bool, device=x0.device)
        for _ in range(self.init_tries):
            missing = (~found).nonzero()[:, 0]
            if missing.numel() == 0:
                break
            draw = self.lo + (self.hi - self.lo) * torch.rand(x0[missing].shape, generator=gen, device=x0.device)
            hit = self._reached(ctx, rows, draw.to(x0.dtype), todo[missing])
            noise[missing[hit]] = draw[hit].to(x0.dtype)
            found[missing[hit]] = True
        low = torch.zeros(todo.numel(), dtype=maths_dtype(x0), device=x0.device)
        high = torch.ones_like(low)
        while bool(found.any()) and float((high - low)[found].max()) > 0.001:
            mid = (low + high) / 2
            blended = self._blend(x0, noise, mid)
            hit = self._reached(ctx, rows, blended, todo)
            high = torch.where(hit, mid, high)
            low = torch.where(hit, low, mid)
        return self._blend(x0, noise, high), found

    @staticmethod
    def _blend(x0, other, alpha):
        a = row_mask(alpha, x0)
        return ((1 - a) * x0.to(a.dtype) + a * other.to(a.dtype)).to(x0.dtype)

    def _project(self, x0, point, alpha):
        """The point at parameter alpha between x0 and point: on the segment (L2), or point
        clipped to the L-inf ball of radius alpha around x0."""
        if self.norm == "l2":
            return self._blend(x0, point, alpha)
        a = row_mask(alpha, x0).to(x0.dtype)
        return torch.minimum(torch.maximum(point, x0 - a), x0 + a)

    def _to_boundary(self, ctx, rows, x0, point, todo, theta) -> Tuple[torch.Tensor, torch.Tensor]:
        """The binary search from x0 towards point (which reaches the goal), to within theta;
        returns the point found and the distance of `point` (before the search)."""
        dist_before = self._distance(point - x0)
        if self.norm == "l2":
            high, tol = torch.ones_like(dist_before), torch.full_like(dist_before, theta)
        else:
            high, tol = dist_before.clone(), torch.clamp(dist_before * theta, max=theta)
        low = torch.zeros_like(high)
        tol = tol.clamp(min=torch.finfo(tol.dtype).tiny)
        while True:
            open_rows = ((high - low) / tol > 1).nonzero()[:, 0]
            if open_rows.numel() == 0:
                break
            mid = (low[open_rows] + high[open_rows]) / 2
            hit = self._reached(ctx, rows, self._project(x0[open_rows], point[open_rows], mid), todo[open_rows])
            high[open_rows] = torch.where(hit, mid, high[open_rows])
            low[open_rows] = torch.where(hit, low[open_rows], mid)
        return self._project(x0, point, high), dist_before

    def _gradient_direction(self, ctx, rows, point, todo, delta, evals: int, gen) -> torch.Tensor:
        """The Monte Carlo estimate of the decision's gradient direction at each row's boundary
        point: `evals` unit probes at distance delta, each weighted by its decision (+1 goal,
        -1 not) minus their mean; unit L2 norm."""
        m = point.shape[0]
        shape = (m, evals) + tuple(point.shape[1:])
        if self.norm == "l2":
            probes = torch.randn(shape, generator=gen, device=point.device, dtype=maths_dtype(point))
        else:
            probes = 2 * torch.rand(shape, generator=gen, device=point.device, dtype=maths_dtype(point)) - 1
        probes = probes / probes.flatten(2).norm(dim=2).reshape(m, evals, *([1] * (point.dim() - 1)))
        d = delta.reshape(m, 1, *([1] * (point.dim() - 1)))
        probed = (point.unsqueeze(1).to(probes.dtype) + d * probes).clamp(self.lo, self.hi)
        probes = (probed - point.unsqueeze(1).to(probes.dtype)) / d
        hit = self._reached(ctx, rows, probed.flatten(0, 1).to(point.dtype), todo.repeat_interleave(evals))
        sign = hit.reshape(m, evals).to(probes.dtype) * 2 - 1
        mean = sign.mean(1, keepdim=True)
        # all probes agree: the mean probe (towards the goal), else the centred weighting
        weights = torch.where(mean.abs() == 1, mean, sign - mean)
        grad = (weights.reshape(m, evals, *([1] * (point.dim() - 1))) * probes).mean(1)
        return grad / (grad.flatten(1).norm(dim=1).reshape(m, *([1] * (point.dim() - 1))) + 1e-12)

    def _step_size(self, ctx, rows, point, update, step, todo) -> torch.Tensor:
        """The largest of step, step / 2, step / 4, ... at which point + step * update still
        reaches the goal (at most 40 halvings; then 0: the row stays)."""
        step = step.clone()
        pending = torch.arange(point.shape[0], device=point.device)
        for _ in range(40):
            if pending.numel() == 0:
                return step
            cand = point[pending] + row_mask(step[pending], update) * update[pending]
            hit = self._reached(ctx, rows, cand.clamp(self.lo, self.hi), todo[pending])
            pending = pending[~hit]
            step[pending] = step[pending] / 2
        step[pending] = 0
        return step
