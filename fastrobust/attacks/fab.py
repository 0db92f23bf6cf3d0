"""FAB: the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), as in AutoAttack.

A minimal-perturbation attack: each iteration linearises the model at the iterate, takes the
nearest linearised decision boundary (untargeted: over all classes; FAB-T: towards one target
class), projects both the iterate and the clean point onto it within the box
(boundary_projection.hyperplane_step) and moves to a convex combination of the two
projections, biased towards the clean point; once a row is misclassified it records the point
if it is the closest so far and steps back towards the clean point by beta. The result is the
closest misclassified point found; it counts when it lies in the eps-ball.

Here every row (samples x restarts x target classes) steps at once on the device with no host
read inside the loop; restarts and target classes are row groups of the engine, run one after
the other on the points still robust (as AutoAttack's) or folded into one pass (restart_batch).
"""
from __future__ import annotations

import torch
from torch import nn

from .boundary_projection import hyperplane_step
from .engine import Attack, Plan, Scalar
from .final_point import evaluate_point
from .objectives import check_target_classes, objective, ranked_targets, reached
from .rows import RowOutcome, Rows, expand_rows, maths_dtype, row_mask, rows_subset
from .validation import check_count, check_early_stop, check_restart_batch

_NO_POINT = 1e10  # the distance of a row that has found no misclassified point yet


def lp_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row L-inf / L2 / L1 norm of a (n, ...) tensor."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.pow(2).sum(1).sqrt()
    return flat.abs().sum(1)


def dual_norms(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The dual norm over the last dimension: L1 for L-inf, L2 for L2, L-inf for L1."""
    if norm == "linf":
        return g.abs().sum(-1)
    if norm == "l2":
        return g.pow(2).sum(-1).sqrt()
    return g.abs().amax(-1)


class FAB(Attack):
    """FAB (untargeted) and FAB-T (targeted=True), L-inf, L2 or L1 (AutoAttack's FABAttack_PT).

    Args (besides Attack's eps, norm, lo, hi, seed, autocast, channels_last):
      steps:            iterations per restart (100).
      restarts:         runs per sample (target class); the first from the clean point, the
                        others from a random point at eps/2 (L-inf: uniform scaled to the
                        face, L2/L1: Gaussian normalised), as AutoAttack's.
      alpha_max:        the largest weight of the clean point's projection (0.1).
      eta:              overshoot of both projections (1.05).
      beta:             the backward step towards the clean point after a success (0.9).
      targeted:         FAB-T: towards each of the n_target_classes classes ranked 2nd, 3rd,
                        ... by the clean logits, one row group per class; success still means
                        misclassification (AutoAttack's). With targets=t, towards t, and
                        success means predicting t.
      n_target_classes: 9 (AutoAttack's FAB-T).
      restart_batch:    see APGD ("auto": one group per pass on the CPU, all on a GPU).
      early_stop:       rows leave the pass once they hold a point inside the eps-ball (the same
                        successes, fewer passes; x_adv is that point, not the closest one the
                        remaining iterations would find); "auto": on the CPU. Never with eps=inf.
    eps is the threat ball: the closest misclassified point found is returned where it lies in
    it, the clean point elsewhere; eps=inf returns every misclassified point found (the
    minimal perturbation). The random starts need a finite eps.
    AttackResult.loss is the CW margin at x_adv; backwards counts input-gradient passes
    (untargeted: one per class and row, as the gradients of every logit are needed).
    """

    norms = ("linf", "l2", "l1")

    def __init__(self, model: nn.Module, eps: Scalar = 8 / 255, norm="linf", steps: int = 100, restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, targeted: bool = False,
                 n_target_classes: int = 9, restart_batch="auto", early_stop="auto", **kwargs):
        if kwargs.get("cuda_graph"):
            raise ValueError("cuda_graph: FAB is not captured (its gradients are taken per class); leave it False")
        super().__init__(model, eps=eps, norm=norm, **kwargs)
        self.steps = check_count(steps, "steps", 0)
        self.restarts = check_count(restarts, "restarts", 1)
        self.alpha_max = _check_fraction(alpha_max, "alpha_max")
        self.beta = _check_fraction(beta, "beta")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 1 <= eta < float("inf"):
            raise ValueError(f"eta must be a finite number >= 1, got {eta!r}")
        self.eta = float(eta)
        self.targeted = bool(targeted)
        self.n_target_classes = check_count(n_target_classes, "n_target_classes", 1)
        self.restart_batch = check_restart_batch(restart_batch)
        self.early_stop = check_early_stop(early_stop)

    def _check_targets(self, targets) -> None:
        if targets is not None and not self.targeted:
            raise ValueError("targets: given to an untargeted FAB (construct it with targeted=True)")

    def _plan(self, ctx, x0, y, targets) -> Plan:
        """The clean points first (one forward): those already successful keep x, as AutoAttack's."""
        output = ctx.model.output(x0)
        ctx.count(x0.shape[0], backward=False)
        goal = "fooled" if targets is None else "target"
        initial = (objective("cw", output, y, targets), reached(goal, output.logits, y, targets))
        if targets is not None:
            group_targets = targets.expand(self.restarts, -1)
        elif self.targeted:
            check_target_classes(self.n_target_classes, output.logits.shape[1])
            group_targets = ranked_targets(output.logits, self.n_target_classes, self.restarts)
        else:
            group_targets = None
        groups = self.restarts if group_targets is None else group_targets.shape[0]
        return Plan(groups, goal, group_targets, initial)

    def _run_rows(self, ctx, rows: Rows, evaluate: bool) -> RowOutcome:
        full = rows
        clean = rows.x0.to(maths_dtype(rows.x0))
        n = rows.n
        radius = expand_rows(rows.eps, n, clean.dtype)
        x0, eps = clean, radius  # the rows still in the pass (all of them until some leave)
        x = self._start(rows, x0, eps)
        best = x0.clone()
        dist = torch.full((n,), _NO_POINT, dtype=x0.dtype, device=x0.device)
        out_best, out_dist = best.clone(), dist.clone()
        position = torch.arange(n, device=x0.device)
        stops_early = self._stops_early(ctx, rows) and bool(torch.isfinite(eps).any())
        for _ in range(self.steps):
            if stops_early:  # rows with a point in the ball leave; the rest go on
                done = (dist <= eps) & torch.isfinite(eps)
                if bool(done.any()):
                    out_best[position[done]], out_dist[position[done]] = best[done], dist[done]
                    stay = (~done).nonzero()[:, 0]
                    position, x, x0, best, dist, eps = (t[stay] for t in (position, x, x0, best, dist, eps))
                    rows = rows_subset(rows, stay)
                    if rows.n == 0:
                        break
            x, best, dist = self._iteration(ctx, rows, x, x0, best, dist)
        out_best[position], out_dist[position] = best, dist
        kept = out_dist <= radius
        x_adv = torch.where(row_mask(kept, out_best), out_best, clean).to(full.x0.dtype)
        return evaluate_point(ctx, full, self._layout(x_adv), evaluate)

    def _iteration(self, ctx, rows: Rows, x, x0, best, dist):
        """One FAB step of every row: (x, best, dist) after it."""
        n = rows.n
        w, b = self._boundary(ctx, rows, x)
        step = hyperplane_step(torch.cat((x.flatten(1), x0.flatten(1))), torch.cat((w, w)),
                               torch.cat((b, b)), self.norm, self.lo, self.hi)
        size = lp_norms(step, self.norm).clamp(min=1e-8)
        alpha = row_mask((size[:n] / (size[:n] + size[n:])).clamp(0, self.alpha_max), x)
        to_x, to_x0 = step[:n].reshape(x.shape), step[n:].reshape(x.shape)
        x = ((x + self.eta * to_x) * (1 - alpha) + (x0 + self.eta * to_x0) * alpha).clamp(self.lo, self.hi)
        fooled = rows.reached(ctx.model.logits(self._model_input(x, rows)))
        ctx.count(n, backward=False)
        length = lp_norms(x - x0, self.norm)
        closer = fooled & (length < dist)
        best = torch.where(row_mask(closer, x), x, best)
        dist = torch.where(closer, length, dist)
        x = torch.where(row_mask(fooled, x), x0 + (x - x0) * self.beta, x)
        return x, best, dist

    def _model_input(self, x: torch.Tensor, rows: Rows) -> torch.Tensor:
        return self._layout(x.to(rows.x0.dtype))

    def _boundary(self, ctx, rows: Rows, x: torch.Tensor):
        """(w, b) of each row's nearest linearised boundary at x: {z: w.z = b}, w (n, D)."""
        n = rows.n
        x_in, logits = ctx.model.logits_with_graph(self._model_input(x, rows))
        ctx.count(n, backward=False)
        rows_i = torch.arange(n, device=x.device)
        if rows.targets is not None:
            # FAB-T: the boundary between the label and the row's target class
            gap = logits[rows_i, rows.targets] - logits[rows_i, rows.y]
            (grad,) = torch.autograd.grad(gap.sum(), x_in)
            ctx.backwards += n
            w = grad.to(x.dtype).flatten(1)
            f = gap.detach().to(x.dtype)
        else:
            classes = logits.shape[1]
            grads = torch.stack([torch.autograd.grad(logits[:, k].sum(), x_in, retain_graph=k + 1 < classes)[0]
                                 for k in range(classes)], 1).to(x.dtype).flatten(2)
            ctx.backwards += classes * n
            z = logits.detach().to(x.dtype)
            gaps = z - z[rows_i, rows.y][:, None]
            normals = grads - grads[rows_i, rows.y][:, None]
            gaps[rows_i, rows.y] = _NO_POINT  # the label's own "boundary" is never the nearest
            nearest = (gaps.abs() / (dual_norms(normals, self.norm) + 1e-12)).argmin(1)
            w, f = normals[rows_i, nearest], gaps[rows_i, nearest]
        b = -f + (w * x.flatten(1)).sum(1)
        return w, b

    def _start(self, rows: Rows, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The clean point for a row group's first restart, a random point at eps/2 for the others."""
        n = rows.n
        group = rows.first_group + torch.arange(n, device=x0.device) // max(n // rows.groups, 1)
        random = (group % self.restarts) > 0
        if self.restarts == 1 or not bool(random.any()):
            return x0.clone()
        gen = rows.generator
        if self.norm == "linf":
            t = 2 * torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) - 1
        else:
            t = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        radius = eps.clamp(max=_NO_POINT) / 2
        x = x0 + row_mask(radius / lp_norms(t, self.norm), t) * t
        return torch.where(row_mask(random, x0), x.clamp(self.lo, self.hi), x0)


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)
