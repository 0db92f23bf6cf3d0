"""The sign-step PGD loop shared by PGD, FATPGD, AlternatingPGD and HypocriticalPGD.

Each iteration: forward and input gradient of the step's loss, best-point update, early-stop
bookkeeping, then one fused pgd_step_ (sign step for L-inf, normalised step for L2, projection,
box clip) on the active rows. Nothing in an iteration reads a tensor value on the host, so the
iteration body can be captured in a CUDA graph (see graph.StepRunner).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol

import torch

from ..ops import pgd_step_, pgd_update_best_
from .l1_ball import sparse_l1_step_
from .rows import RowOutcome, Rows, maths_dtype

# Which point a PGD-style attack returns per row (keep=...), as pgd_update_best_ modes:
#   success: the first successful iterate, else the highest-loss one (needs the last iterate evaluated);
#   loss:    the highest-loss iterate;
#   last:    the final iterate (torchattacks), no best tracking.
KEEP_MODES = {"success": "first_success", "loss": "loss", "last": None}


class StepControl(Protocol):
    """Per-row early stopping (FAT): which rows step, and the noise added to the step."""

    active: Optional[torch.Tensor]
    noise: Optional[torch.Tensor]

    def tensors(self) -> List[torch.Tensor]: ...  # the static tensors it updates

    def prepare(self) -> None: ...  # eager work before an iteration (fresh noise)

    def observe(self, rows: Rows, logits: torch.Tensor) -> None: ...  # inside the iteration, before the step


class BestTracker:
    """Each row's best point so far (pgd_update_best_ with `mode`; a point with a non-finite
    loss is never kept), and which rows met a non-finite loss. Until a row has a point it holds
    the clean input x0 with loss -inf."""

    def __init__(self, x: torch.Tensor, x0: torch.Tensor, mode: str):
        self.mode = mode
        self.x = torch.empty_like(x).copy_(x0)  # x's layout: pgd_update_best_ writes it in place
        self.loss = torch.full((x.shape[0],), -math.inf, dtype=maths_dtype(x), device=x.device)
        self.success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.nonfinite = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def tensors(self) -> List[torch.Tensor]:
        return [self.x, self.loss, self.success, self.nonfinite]

    def update(self, x: torch.Tensor, score: torch.Tensor, is_adv: torch.Tensor) -> None:
        pgd_update_best_(self.x, self.loss, self.success, x, score, is_adv, mode=self.mode, nonfinite=self.nonfinite)


def accumulate_momentum_(velocity: torch.Tensor, grad: torch.Tensor, momentum: float) -> None:
    """MI-FGSM's accumulator, in place: velocity <- momentum * velocity + grad / mean|grad|, the
    mean over each row's elements (a row with a zero gradient adds nothing)."""
    g = grad.to(velocity.dtype)
    scale = g.abs().flatten(1).mean(1).clamp_min(torch.finfo(velocity.dtype).tiny)
    velocity.mul_(momentum).add_(g / scale.view(-1, *([1] * (g.dim() - 1))))


def note_nonfinite(nonfinite: torch.Tensor, loss: torch.Tensor) -> None:
    """nonfinite |= the loss is not finite, in place (no host sync)."""
    torch.logical_or(nonfinite, ~torch.isfinite(loss), out=nonfinite)


@dataclass
class SignSteps:
    """`steps` iterations of sign-step PGD.

    loss_at(t): the loss kind ("ce", "cw", "dlr") whose gradient step t follows.
    keep:       pgd_update_best_ mode of the returned point, or None for the last iterate.
    score:      (rows, logits, loss) -> the per-row objective that best tracking maximises
                and the result reports; default the step's loss (its negative for descent).
    descent:    step against the gradient (hypocritical attack).
    l1_sparsity: norm "l1": the fraction of coordinates a step leaves out (l1_ball.sparse_l1_step_).
    momentum:   MI-FGSM (Dong et al. 2018): step along g <- momentum * g + grad / mean|grad|
                (per row; g starts at zero) instead of along grad.
    """

    steps: int
    norm: str
    lo: float
    hi: float
    loss_at: Callable[[int], str]
    keep: Optional[str] = None
    score: Optional[Callable[[Rows, torch.Tensor, torch.Tensor], torch.Tensor]] = None
    descent: bool = False
    l1_sparsity: float = 0.95
    momentum: Optional[float] = None

    def _score(self, rows: Rows, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        if self.score is not None:
            return self.score(rows, logits, loss)
        return -loss if self.descent else loss

    def run(self, ctx, rows: Rows, x: torch.Tensor, control: Optional[StepControl] = None,
            evaluate: bool = True) -> RowOutcome:
        """Runs the loop on the iterate x (updated in place) and returns the kept points; with
        evaluate (or best tracking) the last iterate is evaluated by one extra forward."""
        tracker = None if self.keep is None else BestTracker(x, rows.x0, self.keep)
        # Without best tracking (keep="last") the non-finite losses are noted only when the
        # result is asked for (evaluate): the plain call stays as lean as torchattacks' loop.
        seen = None if tracker is not None or not evaluate else \
            torch.zeros(rows.n, dtype=torch.bool, device=x.device)
        velocity = None if self.momentum is None else torch.zeros_like(x, dtype=maths_dtype(x))
        state = [x] + (tracker.tensors() if tracker else []) + (control.tensors() if control else []) + \
            ([seen] if seen is not None else []) + ([velocity] if velocity is not None else [])
        runner = ctx.step_runner(state)
        for t in range(self.steps):
            kind = self.loss_at(t)
            if control is not None:
                control.prepare()
            runner(kind, lambda kind=kind: self._iteration(ctx, rows, x, kind, tracker, control, seen, velocity))
            ctx.count(rows.n, backward=True)
        if tracker is None and not evaluate:
            return RowOutcome(x, None, None)
        output = ctx.model.output(x)
        logits = output.logits
        ctx.count(rows.n, backward=False)
        kind = self.loss_at(max(self.steps - 1, 0))
        score = self._score(rows, logits, rows.loss_fn(kind)(output))
        is_adv = rows.reached(logits)
        if tracker is None:
            note_nonfinite(seen, score)
            return RowOutcome(x, score, is_adv & torch.isfinite(score), seen)
        tracker.update(x, score, is_adv)
        return RowOutcome(tracker.x, tracker.loss, tracker.success, tracker.nonfinite)

    def _iteration(self, ctx, rows: Rows, x: torch.Tensor, kind: str, tracker: Optional[BestTracker],
                   control: Optional[StepControl], seen: Optional[torch.Tensor] = None,
                   velocity: Optional[torch.Tensor] = None) -> None:
        logits, loss, grad = ctx.model.loss_and_grad(x, rows.loss_fn(kind))
        if velocity is not None:
            accumulate_momentum_(velocity, grad, self.momentum)
            grad = velocity if velocity.dtype == grad.dtype else velocity.to(grad.dtype)
        if tracker is not None:
            tracker.update(x, self._score(rows, logits, loss), rows.reached(logits))
        elif seen is not None:
            note_nonfinite(seen, loss)
        if control is not None:
            control.observe(rows, logits)
        if self.norm == "l1":  # no fused L1 op: the sparse step and the L1-box projection in PyTorch
            if control is not None:
                raise ValueError("norm 'l1' has no per-row step control")
            sparse_l1_step_(x, rows.x0, grad, rows.eps, rows.alpha, self.l1_sparsity, self.lo, self.hi, self.descent)
            return
        pgd_step_(x, rows.x0, grad, rows.eps, rows.alpha,
                  active=None if control is None else control.active,
                  noise=None if control is None else control.noise,
                  norm=self.norm, lo=self.lo, hi=self.hi, descent=self.descent)
