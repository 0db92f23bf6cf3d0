"""DeepFool: the minimal-perturbation attack of Moosavi-Dezfooli et al. (CVPR 2016), L2 and L-inf.

The algorithm (fastrobust.reference.deepfool) steps to the nearest linearised decision
boundary among the candidate classes until the label changes. Here every row still correctly
classified is stepped at once: one forward and one backward per candidate class per
iteration for the whole batch (the gradients of the K candidate logits of each row), rows
leaving the batch when they are fooled; no gradient is taken once every row is. Points misclassified when clean are left as they are.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .engine import Attack, Scalar
from .final_point import evaluate_point, project_onto_ball
from .rows import RowOutcome, Rows, maths_dtype, row_mask
from .validation import check_count

_TINY = 1e-4  # added to |f'_l| so that a step lands past the boundary, as the original code


class DeepFool(Attack):
    """DeepFool, untargeted.

    Args (besides Attack's norm, lo, hi, autocast, channels_last):
      eps:        the threat ball the result is projected onto at the end (default inf: the
                  minimal perturbation DeepFool finds, unbounded).
      steps:      iterations at most (50).
      overshoot:  the iterate is x0 + (1 + overshoot) * (the sum of the steps) (0.02).
      candidates: classes considered per row: the label and the runner-ups of the clean
                  logits, `candidates` in all (10, the original code's; at least 2).
    AttackResult.loss is the CW margin max_{j != y} z_j - z_y at x_adv; backwards counts
    one input-gradient pass per candidate class and row.
    """

    def __init__(self, model: nn.Module, eps: Scalar = math.inf, norm="l2", steps: int = 50, overshoot: float = 0.02,
                 candidates: int = 10, **kwargs):
        if kwargs.get("cuda_graph"):
            raise ValueError("cuda_graph: DeepFool's steps change shape as rows leave; leave it False")
        super().__init__(model, eps=eps, norm=norm, **kwargs)
        self.steps = check_count(steps, "steps", 0)
        if isinstance(overshoot, bool) or not isinstance(overshoot, (int, float)) or not 0 <= overshoot < math.inf:
            raise ValueError(f"overshoot must be a finite number >= 0, got {overshoot!r}")
        self.overshoot = float(overshoot)
        self.candidates = check_count(candidates, "candidates", 2)

    def _run_rows(self, ctx, rows: Rows, evaluate: bool) -> RowOutcome:
        x0, y = rows.x0, rows.y
        dtype = maths_dtype(x0)
        clean = ctx.model.logits(x0)
        ctx.count(rows.n, backward=False)
        k = min(self.candidates, clean.shape[1])
        # the label first, then its runner-ups by the clean logits
        runner_ups = clean.scatter(1, y[:, None], -math.inf).topk(k - 1, dim=1).indices
        classes = torch.cat([y[:, None], runner_ups], dim=1)
        r_tot = torch.zeros_like(x0, dtype=dtype)
        x = x0.clone()
        active = (clean.argmax(1) == y).nonzero()[:, 0]
        for _ in range(self.steps):
            if active.numel() == 0:
                break
            x_in, logits = ctx.model.logits_with_graph(x[active])
            ctx.count(active.numel(), backward=False)
            going = logits.detach().argmax(1) == y[active]
            if not bool(going.any()):
                break
            # the gradients of each row's K candidate logits: K backward passes of the batch
            picked = logits.gather(1, classes[active])
            grads = torch.stack([torch.autograd.grad(picked[:, j].sum(), x_in, retain_graph=j + 1 < k)[0]
                                 for j in range(k)]).to(dtype)
            ctx.backwards += k * active.numel()
            f = picked.detach().to(dtype)
            active, f, grads = active[going], f[going], grads[:, going]
            r_tot[active] += self._step(f, grads)
            x[active] = (x0[active] + (1 + self.overshoot) * r_tot[active]).clamp(self.lo, self.hi).to(x.dtype)
        x = project_onto_ball(x0, x, rows.eps, self.norm, self.lo, self.hi)
        return evaluate_point(ctx, rows, x, evaluate)

    def _step(self, f: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """The step towards the nearest linearised boundary: f (n, K) the candidate logits,
        grads (K, n, ...) their input gradients, column / row 0 the label's."""
        fd = (f[:, 1:] - f[:, :1]).abs()  # (n, K - 1)
        wd = grads[1:] - grads[:1]  # (K - 1, n, ...)
        sizes = wd.flatten(2).norm(p=2 if self.norm == "l2" else 1, dim=2).t()  # (n, K - 1)
        nearest = (fd / (sizes + 1e-8)).argmin(1)
        n = f.shape[0]
        w = wd[nearest, torch.arange(n, device=f.device)]  # (n, ...)
        gap = fd.gather(1, nearest[:, None])[:, 0] + _TINY
        size = sizes.gather(1, nearest[:, None])[:, 0]
        scale = torch.where(size > 0, gap / (size.pow(2) if self.norm == "l2" else size), torch.zeros_like(size))
        direction = w if self.norm == "l2" else w.sign()
        return row_mask(scale, w) * direction
