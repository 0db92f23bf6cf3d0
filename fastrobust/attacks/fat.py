"""FAT's early-stopped PGD (Zhang et al., ICML 2020, "Attacks which do not kill training make
adversarial learning stronger") and its dynamic tau schedule."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .engine import Attack
from .loop import SignSteps
from .rows import Rows
from .starts import clean_start, uniform_start
from .validation import Scalar, check_count, check_radius


def fat_tau(epoch: int, milestones: Sequence[int] = (50, 90)) -> int:
    """FAT's dynamic tau for a 1-based epoch: the number of milestones passed, i.e. 0 for
    epoch <= 50, 1 for epoch <= 90, 2 after (the official --dynamictau schedule)."""
    epoch = check_count(epoch, "epoch", 1)
    return sum(epoch > m for m in milestones)


class EarlyStop:
    """FAT's per-row counters, all on the device.

    At each iteration, for the rows still active: a misclassified row with counter 0 is frozen
    (inactive: it keeps its current point), a misclassified row with counter > 0 decrements
    it; correctly classified rows go on. Active rows then step with noise omega*N(0, 1).
    """

    def __init__(self, rows: Rows, tau: int, omega: float):
        n = rows.n
        self.active = torch.ones(n, dtype=torch.bool, device=rows.x0.device)
        self.counter = torch.full((n,), tau, dtype=torch.int32, device=rows.x0.device)
        self.omega = omega
        self.generator = rows.generator
        # Drawn in the contiguous layout whatever the rows' layout (pgd_step_ reads it in x's).
        self.noise: Optional[torch.Tensor] = (torch.empty(rows.x0.shape, dtype=rows.x0.dtype, device=rows.x0.device)
                                              if omega > 0 else None)

    def tensors(self) -> List[torch.Tensor]:
        return [self.active, self.counter] + ([] if self.noise is None else [self.noise])

    def prepare(self) -> None:
        if self.noise is not None:
            torch.randn(self.noise.shape, generator=self.generator, out=self.noise)
            self.noise.mul_(self.omega)

    def observe(self, rows: Rows, logits: torch.Tensor) -> None:
        wrong = self.active & (logits.argmax(dim=1) != rows.y)
        freeze = wrong & (self.counter == 0)
        self.counter.sub_((wrong & ~freeze).to(self.counter.dtype))
        self.active.logical_and_(~freeze)


class FATPGD(Attack):
    """Early-stopped PGD: K iterations of forward, freeze rule (see EarlyStop), then
    `x <- clip_[lo,hi]( clip_[x0-eps, x0+eps]( x + alpha*sign(grad CE) + omega*N(0, 1) ) )`
    on the active rows. Each sample is output at the point where it was frozen, or after the
    K-th step; the output keeps the input order (the official code reorders its batch).

    tau: extra steps allowed after the first misclassification; tau=0 leaves a sample that is
    misclassified at the start where it is (0 steps), tau >= steps gives plain PGD(+noise).
    The loop always runs K full-batch iterations (frozen rows are computed and masked), so it
    never synchronises with the host. Success: misclassified at the output point.
    Defaults (FAT's CIFAR-10): eps=0.031, alpha=0.007, steps=10, tau=0, omega=0.001, uniform
    random start. Common arguments: see Attack.
    """

    def __init__(self, model: nn.Module, eps: Scalar = 0.031, alpha: Scalar = 0.007, steps: int = 10,
                 tau: int = 0, omega: float = 0.001, random_start: bool = True, **common):
        super().__init__(model, eps=eps, **common)
        self.alpha = check_radius(alpha, "alpha")
        self.steps = check_count(steps, "steps", 0)
        self.tau = check_count(tau, "tau", 0)
        self.omega = check_radius(omega, "omega")
        if isinstance(self.omega, torch.Tensor):
            raise ValueError("omega must be a number")
        self.random_start = bool(random_start)

    def _run_rows(self, ctx, rows, evaluate):
        x = uniform_start(rows, self.norm, self.lo, self.hi) if self.random_start else clean_start(rows)
        loop = SignSteps(self.steps, self.norm, self.lo, self.hi, loss_at=lambda t: "ce")
        return loop.run(ctx, rows, x, control=EarlyStop(rows, self.tau, self.omega), evaluate=evaluate)
