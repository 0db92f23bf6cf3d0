"""The per-row state of an APGD pass, shared by the L-inf/L2 loop (apgd.py) and the L1 loop
(apgd_l1.py)."""
from __future__ import annotations

from typing import List

import torch

from ..ops import pgd_update_best_
from .rows import Rows, row_mask, rows_subset, take_rows, usable_start


class APGDState:
    """The per-row state of one APGD pass (AutoAttack's attack_single_run, all rows at once).

    x, x_prev, grad:          iterate, previous iterate (momentum) and the gradient at x;
    x_best, grad_best, loss_best: the highest-loss point (the restart point at checkpoints);
    x_out, loss_out, success: the returned point: the last successful iterate, else x_best
                              (pgd_update_best_ "last_success" = AutoAttack's x_best_adv);
    eta:                      per-row step size, 2*eps at the start;
    increases, loss_prev:     how many iterations of the current interval raised the loss over
                              the previous iteration's; loss_prev starts at 0, as AutoAttack's
                              first check compares its first loss with loss_steps[-1], still 0;
    improved:                 loss_best rose since the last checkpoint (AutoAttack's
                              loss_best_last_check < loss_best: loss_best only ever rises);
    reduced:                  the step size was halved at the last checkpoint (starts True).
    """

    def __init__(self, rows: Rows, x: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor, is_adv: torch.Tensor):
        n = rows.n
        # A start with a non-finite loss is no best point: -inf, not a success (usable_start).
        loss, is_adv, self.nonfinite = usable_start(loss, is_adv)
        self.x, self.x_prev, self.grad = x, x.clone(), grad.clone()
        self.x_best, self.grad_best, self.loss_best = x.clone(), grad.clone(), loss.clone()
        self.x_out, self.loss_out, self.success = x.clone(), loss.clone(), is_adv.clone()
        self.eta = (2 * rows.eps).expand(n).clone()
        self.increases = torch.zeros(n, device=x.device)
        self.loss_prev = torch.zeros_like(loss)
        self.improved = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.reduced = torch.ones(n, dtype=torch.bool, device=x.device)

    def tensors(self) -> List[torch.Tensor]:
        return [self.x, self.x_prev, self.grad, self.x_best, self.grad_best, self.loss_best, self.x_out,
                self.loss_out, self.success, self.eta, self.increases, self.loss_prev, self.improved, self.reduced,
                self.nonfinite]

    FIELDS = ("x", "x_prev", "grad", "x_best", "grad_best", "loss_best", "x_out", "loss_out", "success", "eta",
              "increases", "loss_prev", "improved", "reduced", "nonfinite")

    def keep_rows(self, index: torch.Tensor) -> None:
        """Keeps only the rows `index` (in their memory layout: the fused ops want the
        iterates' strides to agree)."""
        for name in self.FIELDS:
            setattr(self, name, take_rows(getattr(self, name), index))

    def record(self, loss: torch.Tensor, grad: torch.Tensor, is_adv: torch.Tensor) -> None:
        """Takes in the loss, gradient and goal at the new iterate self.x."""
        self.grad.copy_(grad)
        # The improvement mask is taken before pgd_update_best_ raises loss_best.
        improved = loss > self.loss_best
        self.grad_best.copy_(torch.where(row_mask(improved, grad), grad, self.grad_best))
        pgd_update_best_(self.x_best, self.loss_best, self.improved, self.x, loss, improved, mode="loss")
        pgd_update_best_(self.x_out, self.loss_out, self.success, self.x, loss, is_adv, mode="last_success",
                         nonfinite=self.nonfinite)
        self.increases.add_((loss > self.loss_prev).to(self.increases.dtype))
        self.loss_prev.copy_(loss)

    def checkpoint(self, interval: int, rho: float) -> torch.Tensor:
        """The checkpoint rule; returns the rows where it fired. It fires where (i) the loss rose
        in at most rho*interval iterations of the interval, or (ii) the step size was not halved
        at the last checkpoint and loss_best has not risen since; there eta is halved and the
        iterate and its gradient restart from x_best."""
        fired = (self.increases <= interval * rho) | (~self.reduced & ~self.improved)
        self.reduced.copy_(fired)
        self.improved.zero_()
        self.increases.zero_()
        self.eta.copy_(torch.where(fired, self.eta / 2, self.eta))
        rows = row_mask(fired, self.x)
        self.x.copy_(torch.where(rows, self.x_best, self.x))
        self.grad.copy_(torch.where(rows, self.grad_best, self.grad))
        return fired


class Retirement:
    """Early stopping of an APGD pass: rows whose goal holds leave the pass, their outcome
    (x_out, loss_out, success, nonfinite) written into the pass's full-size result; the pass
    goes on with the rest. Only the returned point changes (the first successful iterate
    instead of the last one): which rows succeed does not, rows being independent."""

    def __init__(self, state: APGDState):
        self.position = torch.arange(state.x.shape[0], device=state.x.device)
        self.x, self.loss = state.x_out.clone(), state.loss_out.clone()
        self.success, self.nonfinite = state.success.clone(), state.nonfinite.clone()

    def retire(self, state: APGDState, rows: Rows, done: torch.Tensor):
        """Moves the rows `done` out of `state`; returns (the rows that stay, their index)."""
        self._write(state, done)
        stay = (~done).nonzero()[:, 0]
        self.position = self.position[stay]
        state.keep_rows(stay)
        return rows_subset(rows, stay), stay

    def result(self, state: APGDState):
        self._write(state, torch.ones_like(state.success))
        return self.x, self.loss, self.success, self.nonfinite

    def _write(self, state: APGDState, done: torch.Tensor) -> None:
        at = self.position[done]
        self.x[at] = state.x_out[done]
        self.loss[at], self.success[at], self.nonfinite[at] = state.loss_out[done], state.success[done], \
            state.nonfinite[done]
