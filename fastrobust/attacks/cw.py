"""CarliniWagnerL2: the optimisation attack of Carlini & Wagner (IEEE S&P 2017), L2.

Minimises ||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j + kappa, 0) (targeted:
max(max_{j != t} z_j - z_t + kappa, 0)) over x' = lo + (hi - lo) (tanh(w) + 1) / 2, so that the
box holds without clipping, by Adam on w; a binary search per row over c (from
initial_const: x10 until a success, then bisection) finds the smallest constant that still
fools the model, and every iterate that fools it with a smaller L2 distance is kept. With
abort_early, a search step stops when the total loss has not dropped by 0.01 % over a tenth
of its steps (the original code's rule). All rows run as one batch.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._checks.pgd import canonical_norm
from .engine import Attack, Plan, Scalar
from .final_point import evaluate_point, project_onto_ball
from .rows import RowOutcome, Rows, maths_dtype, row_mask
from .validation import check_count, check_targets_match

_UPPER = 1e10  # the binary search's "no success yet" bound, as in the original code


class CarliniWagnerL2(Attack):
    """Carlini-Wagner L2.

    Args (besides Attack's lo, hi, seed, autocast, channels_last):
      eps:                 the L2 ball the result is projected onto at the end (default inf:
                           the smallest perturbation found, unbounded).
      steps:               Adam steps per binary-search step (original: 10000; default 1000).
      binary_search_steps: values of c tried per row (9).
      lr:                  Adam's learning rate on w (0.01).
      initial_const:       the first c (1e-3).
      kappa:               the confidence margin (0).
      abort_early:         stop a search step once the loss stalls (True).
      targeted:            reach `targets` (given to the call).
    Points the model already gets wrong (targeted: at their target) are not attacked.
    AttackResult.loss is the CW margin at x_adv (maximised).
    """

    def __init__(self, model: nn.Module, eps: Scalar = math.inf, steps: int = 1000, binary_search_steps: int = 9,
                 lr: float = 0.01, initial_const: float = 1e-3, kappa: float = 0.0, abort_early: bool = True,
                 targeted: bool = False, **kwargs):
        if "norm" in kwargs and canonical_norm(kwargs["norm"]) != "l2":
            raise ValueError(f"norm: CarliniWagnerL2 is an L2 attack, got {kwargs['norm']!r}")
        if kwargs.get("cuda_graph"):
            raise ValueError("cuda_graph: CarliniWagnerL2 is not captured; leave it False")
        kwargs["norm"] = "l2"
        super().__init__(model, eps=eps, **kwargs)
        self.steps = check_count(steps, "steps", 0)
        self.binary_search_steps = check_count(binary_search_steps, "binary_search_steps", 1)
        for name, value in (("lr", lr), ("initial_const", initial_const)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0 <= kappa < math.inf:
            raise ValueError(f"kappa must be a finite number >= 0, got {kappa!r}")
        self.lr, self.initial_const, self.kappa_margin = float(lr), float(initial_const), float(kappa)
        self.abort_early = bool(abort_early)
        self.targeted = bool(targeted)
        self.goal = "target" if self.targeted else "fooled"

    def _check_targets(self, targets) -> None:
        check_targets_match(self.targeted, targets, "CarliniWagnerL2")

    def _plan(self, ctx, x0, y, targets) -> Plan:
        return self._plan_after_clean_check(ctx, x0, y, targets, "cw")

    def _margins(self, logits: torch.Tensor, rows: Rows) -> torch.Tensor:
        """z_y - max_{j != y} z_j (targeted: max_{j != t} z_j - z_t): <= -kappa is a success."""
        k = rows.y if rows.targets is None else rows.targets
        own = logits.gather(1, k[:, None])[:, 0]
        others = logits.scatter(1, k[:, None], -math.inf).amax(1)
        return own - others if rows.targets is None else others - own

    def _run_rows(self, ctx, rows: Rows, evaluate: bool) -> RowOutcome:
        x0 = rows.x0
        dtype = maths_dtype(x0)
        n = rows.n
        span = self.hi - self.lo
        # w such that x' = x0 at the start (inside the open box: atanh is finite)
        unit = ((x0.to(dtype) - self.lo) / span * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6) if span > 0 else None
        w0 = torch.atanh(unit) if unit is not None else torch.zeros_like(x0, dtype=dtype)
        const = torch.full((n,), self.initial_const, dtype=dtype, device=x0.device)
        lower, upper = torch.zeros_like(const), torch.full_like(const, _UPPER)
        best_l2 = torch.full_like(const, math.inf)
        best_x = x0.clone()
        dims = tuple(range(1, x0.dim()))
        check_every = max(self.steps // 10, 1)
        for _ in range(self.binary_search_steps if span > 0 else 0):
            w = w0.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=self.lr)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x0.device)
            previous = math.inf
            for it in range(self.steps):
                x_adv = self.lo + span * (torch.tanh(w) + 1) / 2
                logits = ctx.model.logits_through(x_adv.to(x0.dtype))
                margins = self._margins(logits, rows)
                l2 = (x_adv - x0.to(dtype)).pow(2).sum(dims)
                penalty = (margins + self.kappa_margin).clamp(min=0)
                loss = (l2 + const * penalty).sum()
                (grad,) = torch.autograd.grad(loss, w)
                ctx.count(n, backward=True)
                with torch.no_grad():
                    hit = (margins.detach() <= -self.kappa_margin) & rows.reached(logits.detach())
                    better = hit & (l2.detach() < best_l2)
                    best_l2 = torch.where(better, l2.detach(), best_l2)
                    best_x = torch.where(row_mask(better, best_x), x_adv.detach().to(x0.dtype), best_x)
                    succeeded |= hit
                w.grad = grad
                optimizer.step()
                if self.abort_early and it % check_every == 0:
                    total = float(loss.detach())
                    if total > previous * 0.9999:
                        break
                    previous = total
            # the binary search on c, per row
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            bounded = upper < _UPPER / 10
            const = torch.where(bounded, (lower + upper) / 2, const * 10)
        x = project_onto_ball(x0, best_x, rows.eps, "l2", self.lo, self.hi)
        return evaluate_point(ctx, rows, x, evaluate)
