"""APGD (Croce & Hein, ICML 2020): AutoAttack's APGDAttack / APGDAttack_targeted, batched.

Every row has its own step size, best point and oscillation counters on the device; the
checkpoint iterations are known in advance, so the checkpoint rule runs as torch.where on
all rows without reading anything back to the host.
"""
from __future__ import annotations

from typing import List, Tuple, Union

import torch
from torch import nn

from ..ops import apgd_step_
from .apgd_l1 import run_l1
from .apgd_state import APGDState, Retirement
from .engine import Attack, Plan
from .objectives import check_loss, check_target_classes, objective, ranked_targets, reached
from .rows import RowOutcome, Rows
from .starts import autoattack_start
from .validation import Scalar, check_count, check_early_stop, check_radius, check_restart_batch


def apgd_checkpoints(steps: int) -> List[Tuple[int, int]]:
    """(iteration, interval length) of every APGD checkpoint for `steps` iterations.

    The first interval is max(int(0.22 steps), 1) iterations; each next one is shorter by
    max(int(0.03 steps), 1), down to max(int(0.06 steps), 1) (AutoAttack's n_iter_2, size_decr,
    n_iter_min; the paper's p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)). The check runs at
    the end of the interval's last iteration (0-based). steps=100: intervals 22, 19, 16, 13, 10,
    7, 6, 6 ending after 22, 41, 57, 70, 80, 87, 93 and 99 iterations.
    """
    interval = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    checkpoints, done = [], interval
    while done <= steps:
        checkpoints.append((done - 1, interval))
        interval = max(interval - shrink, shortest)
        done += interval
    return checkpoints


class APGD(Attack):
    """Auto-PGD with AutoAttack's semantics; restarts and target classes as row groups.

    Step (per row, eta = 2*eps at the start, momentum a = 0.75, a = 1 on the first iteration):
      z = P(x + eta*sign(g))  (L2: eta*g/||g||);  x_new = P(x + a(z - x) + (1 - a)(x - x_prev)),
    P the projection onto the eps-ball and the box. At the checkpoints of apgd_checkpoints(steps)
    the rule of APGDState.checkpoint halves eta and restarts from the best point.
    loss: "ce" or "dlr" (APGD-CE / APGD-DLR), or a callable loss of the model's whole output
      (see PGD).
    targeted: without targets, AutoAttack's APGD-T: the targeted loss (DLR: -(z_y - z_t)/
      (z_pi1 - (z_pi3 + z_pi4)/2); CE: -CE(t)) towards each of the n_target_classes classes
      ranked 2nd, 3rd, ... by the clean logits, one row group per class; success means
      misclassification. With targets=t, one group per restart towards t; success means predicting t.
    As AutoAttack, the clean inputs are classified first: a sample already successful there
    keeps x and is not attacked. The returned point is the last successful iterate, else the
    highest-loss one. Restarts (and target classes) run as row groups, restart_batch groups per
    pass with the samples already fooled dropped in between: "auto" (default) one per pass on
    the CPU (as AutoAttack's code), all in one pass on a GPU; None all in one pass.
    The random start is AutoAttack's (see starts.autoattack_start), from `seed`.
    norm="l1": APGD-L1 (Croce & Hein 2021; see apgd_l1): sparse steps on the top fraction of the
      gradient's coordinates, projected onto the L1 ball within the box; eps_schedule=True runs
      it at 3 eps, 2 eps, then eps (AutoAttack's use_largereps, its L1 "standard" setting).
      The L1 pass is not captured in a CUDA graph.
    early_stop: rows leave the pass at their first successful iterate (one host read per
      iteration): the same successes as running every row to the end, fewer forwards; x_adv is
      that first successful point instead of AutoAttack's last one. "auto" (default): on for
      inputs on the CPU, off on a GPU and under cuda_graph.
    eot_iter: gradients averaged over this many passes of a randomised model (AutoAttack's EOT;
      its "rand" version uses 20); logits and loss are those of the last pass.
    Defaults: eps=8/255, steps=100, rho=0.75, momentum=0.75. Common arguments: see Attack.
    """

    norms = ("linf", "l2", "l1")

    def __init__(self, model: nn.Module, eps: Scalar = 8 / 255, steps: int = 100, norm="linf", loss="ce",
                 targeted: bool = False, n_target_classes: int = 9, restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75, restart_batch: Union[int, str, None] = "auto", eot_iter: int = 1,
                 eps_schedule: bool = False, early_stop: Union[bool, str] = "auto", **common):
        super().__init__(model, eps=eps, norm=norm, **common)
        self.steps = check_count(steps, "steps", 0)
        self.loss = check_loss(loss)
        if self.loss == "cw":
            raise ValueError("loss must be 'ce', 'dlr' or a callable for APGD, got 'cw'")
        self.targeted = bool(targeted)
        self.n_target_classes = check_count(n_target_classes, "n_target_classes", 1)
        self.restarts = check_count(restarts, "restarts", 1)
        self.restart_batch = check_restart_batch(restart_batch)
        self.eot_iter = check_count(eot_iter, "eot_iter", 1)
        self.eps_schedule = bool(eps_schedule)
        self.early_stop = check_early_stop(early_stop)
        if self.eps_schedule and self.norm != "l1":
            raise ValueError(f"eps_schedule: the 3 eps / 2 eps / eps schedule is APGD-L1's; norm is {self.norm!r}")
        self.rho = float(check_radius(rho, "rho"))
        self.momentum = float(check_radius(momentum, "momentum"))
        if self.momentum > 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")

    def _check_targets(self, targets) -> None:
        if targets is not None and not self.targeted:
            raise ValueError("targets: given to an untargeted APGD (construct it with targeted=True)")

    def _plan(self, ctx, x0, y, targets) -> Plan:
        output = ctx.model.output(x0)
        logits = output.logits
        ctx.count(x0.shape[0], backward=False)
        goal = "fooled"
        if targets is not None:
            goal, group_targets = "target", targets.expand(self.restarts, -1)
        elif self.targeted:
            check_target_classes(self.n_target_classes, logits.shape[1])
            group_targets = ranked_targets(logits, self.n_target_classes, self.restarts)
        else:
            group_targets = None
        first = None if group_targets is None else group_targets[0]
        initial = (objective(self.loss, output, y, first), reached(goal, logits, y, first))
        groups = self.restarts if group_targets is None else group_targets.shape[0]
        return Plan(groups, goal, group_targets, initial)

    def _run_rows(self, ctx, rows, evaluate):
        loss_fn = rows.loss_fn(self.loss)
        if self.norm == "l1":
            return run_l1(self, ctx, rows, loss_fn)
        x = autoattack_start(rows, self.norm, self.lo, self.hi)
        logits, loss, grad = self._loss_and_grad(ctx, x, loss_fn)
        ctx.count(rows.n * self.eot_iter, backward=True)
        state = APGDState(rows, x, loss, grad, rows.reached(logits))
        checkpoints = dict(apgd_checkpoints(self.steps))
        runner = ctx.step_runner(state.tensors())
        retired = Retirement(state) if self._stops_early(ctx, rows) else None
        for i in range(self.steps):
            if retired is not None and bool(state.success.any()):
                rows, _ = retired.retire(state, rows, state.success)
                loss_fn = rows.loss_fn(self.loss)
                if rows.n == 0:
                    break
            momentum = 1.0 if i == 0 else self.momentum
            runner(i == 0, lambda a=momentum, r=rows, f=loss_fn: self._iteration(ctx, r, state, f, a))
            ctx.count(rows.n * self.eot_iter, backward=True)  # here: a replayed graph does not run Python
            if i in checkpoints:
                state.checkpoint(checkpoints[i], self.rho)
        if retired is not None:
            return RowOutcome(*retired.result(state))
        return RowOutcome(state.x_out, state.loss_out, state.success, state.nonfinite)

    def _iteration(self, ctx, rows: Rows, state: APGDState, loss_fn, momentum: float) -> None:
        apgd_step_(state.x, state.x_prev, rows.x0, state.grad, state.eta, rows.eps, momentum=momentum,
                   norm=self.norm, lo=self.lo, hi=self.hi)
        logits, loss, grad = self._loss_and_grad(ctx, state.x, loss_fn)
        state.record(loss, grad, rows.reached(logits))

    def _loss_and_grad(self, ctx, x: torch.Tensor, loss_fn):
        """(logits, loss, gradient) at x; with eot_iter > 1 the gradient is the mean over
        eot_iter passes of a randomised model, logits and loss those of the last pass
        (AutoAttack's EOT)."""
        logits, loss, grad = ctx.model.loss_and_grad(x, loss_fn)
        for _ in range(self.eot_iter - 1):
            logits, loss, more = ctx.model.loss_and_grad(x, loss_fn)
            grad = grad + more
        return logits, loss, grad if self.eot_iter == 1 else grad / self.eot_iter
