"""Alternating-objectives PGD (Antoniou, Georgiou, Potamianos; SaTML 2023)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .engine import Attack
from .loop import SignSteps
from .objectives import attack_loss, check_loss_name
from .starts import clean_start, uniform_start, vertex_start
from .validation import Scalar, check_count, check_radius, check_restart_batch


def stage_of(step: int, steps: int, stages: int) -> int:
    """The schedule stage of iteration `step`: min(step // (steps // stages), stages - 1).
    For steps=100 this switches at 50 (two losses) or at 33 and 66 (three), as the official
    configs' timesteps [50, 100] and [33, 66, 100]."""
    return min(step // max(steps // stages, 1), stages - 1)


def _cw_margin(rows, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    return attack_loss("cw", logits, rows.y)


class AlternatingPGD(Attack):
    """PGD whose surrogate loss switches at fixed iterations: schedule ("ce", "cw") runs CE for
    the first half of the steps and the CW margin for the second; ("ce", "cw", "dlr") switches
    at steps//3 and 2*steps//3. Any order or subset of {"ce", "cw", "dlr"} works.

    Step: `x <- clip( clip_[x0-eps, x0+eps]( x + alpha*sign(g) ) )`, alpha = eps/4 by default.
    CW is the unclamped margin max_{i!=y} z_i - z_y, DLR AutoAttack's.
    Like the official code, every misclassified iterate is stored and the last one is returned
    (pgd_update_best_ mode "last_success": the official `x_adv[is_fooled] = xn[is_fooled]`
    overwrites at each fooled iterate, the final iterate included). A sample never fooled gets
    its iterate of largest CW margin (the official code returns x there; robust accuracy is the
    same); the margin is also the reported loss, one scale for all stages.
    random_start (or restarts > 1, as the official code): a random vertex of the L-inf ball,
    x + eps*sign(U(-1, 1)) (box-clipped); for L2 a uniform start in the ball.
    Defaults: eps=8/255, steps=100, 1 restart, start at x. Common arguments: see Attack.
    """

    def __init__(self, model: nn.Module, eps: Scalar = 8 / 255, alpha: Optional[Scalar] = None, steps: int = 100,
                 schedule: Sequence[str] = ("ce", "cw"), random_start: bool = False, restarts: int = 1,
                 restart_batch: Union[int, str, None] = "auto", **common):
        super().__init__(model, eps=eps, **common)
        self.alpha = self.eps / 4 if alpha is None else check_radius(alpha, "alpha")
        self.steps = check_count(steps, "steps", 0)
        if isinstance(schedule, str) or len(schedule) == 0:
            raise ValueError(f"schedule must be a non-empty sequence of loss names, got {schedule!r}")
        self.schedule = tuple(check_loss_name(kind, "schedule") for kind in schedule)
        self.random_start = bool(random_start)
        self.restarts = check_count(restarts, "restarts", 1)
        self.restart_batch = check_restart_batch(restart_batch)

    def loss_at(self, step: int) -> str:
        return self.schedule[stage_of(step, self.steps, len(self.schedule))]

    def _start(self, rows):
        if not (self.random_start or self.restarts > 1):
            return clean_start(rows)
        if self.norm == "linf":
            return vertex_start(rows, self.lo, self.hi)
        return uniform_start(rows, self.norm, self.lo, self.hi)

    def _run_rows(self, ctx, rows, evaluate):
        loop = SignSteps(self.steps, self.norm, self.lo, self.hi, loss_at=self.loss_at,
                         keep="last_success", score=_cw_margin)
        return loop.run(ctx, rows, self._start(rows), evaluate=evaluate)
