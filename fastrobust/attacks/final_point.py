"""What the attacks that search on their own (Square, DeepFool, CarliniWagnerL2) do with the
point they found: project it onto the threat ball, and evaluate it once."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .rows import RowOutcome, Rows, maths_dtype, row_mask


def project_onto_ball(x0: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str, lo: float,
                      hi: float) -> torch.Tensor:
    """x projected onto the eps-ball (one value, or one per row) around x0, then the box; x
    itself where eps is infinite everywhere (a minimal-perturbation attack run unbounded)."""
    eps = eps.to(maths_dtype(x0))
    if not bool(torch.isfinite(eps).any()):
        return x
    eps = eps.expand(x0.shape[0]) if eps.numel() == 1 else eps
    delta = (x - x0).to(eps.dtype)
    if norm == "l2":
        size = delta.flatten(1).norm(dim=1)
        delta = delta * row_mask(torch.where(size > eps, eps / (size + 1e-12), torch.ones_like(size)), delta)
    else:
        bound = row_mask(eps, delta)
        delta = torch.maximum(torch.minimum(delta, bound), -bound)
    return (x0 + delta.to(x0.dtype)).clamp(lo, hi)


def evaluate_point(ctx, rows: Rows, x: torch.Tensor, evaluate: bool, kind: str = "cw",
                   nonfinite: Optional[torch.Tensor] = None) -> RowOutcome:
    """The RowOutcome of x: with evaluate, one forward for the objective `kind` (maximised)
    and the goal at x; a point whose objective is not finite gives way to the clean point
    (loss -inf, no success), as everywhere in the engine."""
    if not evaluate:
        return RowOutcome(x, None, None, nonfinite)
    output = ctx.model.output(x)
    ctx.count(rows.n, backward=False)
    loss = rows.loss_fn(kind)(output)
    usable = torch.isfinite(loss)
    x = torch.where(row_mask(usable, x), x, rows.x0)
    loss = torch.where(usable, loss, torch.full_like(loss, -math.inf))
    seen = ~usable if nonfinite is None else nonfinite | ~usable
    return RowOutcome(x, loss, rows.reached(output.logits) & usable, seen)
