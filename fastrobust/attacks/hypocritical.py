"""Hypocritical examples (Tao et al., AAAI 2022): PGD descent on CE towards the true class."""
from __future__ import annotations

from torch import nn

from .engine import Attack
from .loop import KEEP_MODES, SignSteps
from .starts import gaussian_start
from .validation import Scalar, check_choice, check_count, check_radius

# The official start: x + 0.01*N(0, 1).
START_SIGMA = 0.01


class HypocriticalPGD(Attack):
    """x_hyp = argmin_{||delta|| <= eps} CE(f(x + delta), y), found by PGD descent:
    x <- clip( P_eps( x - alpha*sign(grad CE) ) ) (L2: x - alpha*g/||g||), from x + 0.01*N(0, 1)
    projected onto the eps-ball and the box.

    Meant for misclassified inputs: success means the sample becomes correctly classified, and
    the hypocritical risk is the success rate on the misclassified set. It runs on every input
    given (on a correctly classified one it raises the confidence in the true class).
    keep: "last" (default, the official final iterate), "success" (the first correctly
    classified iterate) or "loss"; the reported loss is the maximised objective, -CE.
    Defaults: eps=8/255, alpha=2/255, steps=10. Common arguments: see Attack.
    """

    goal = "correct"

    def __init__(self, model: nn.Module, eps: Scalar = 8 / 255, alpha: Scalar = 2 / 255, steps: int = 10,
                 norm="linf", keep: str = "last", **common):
        super().__init__(model, eps=eps, norm=norm, **common)
        self.alpha = check_radius(alpha, "alpha")
        self.steps = check_count(steps, "steps", 0)
        self.keep = check_choice(keep, tuple(KEEP_MODES), "keep")

    def _run_rows(self, ctx, rows, evaluate):
        x = gaussian_start(rows, START_SIGMA, self.norm, self.lo, self.hi)
        loop = SignSteps(self.steps, self.norm, self.lo, self.hi, loss_at=lambda t: "ce",
                         keep=KEEP_MODES[self.keep], descent=True)
        return loop.run(ctx, rows, x, evaluate=evaluate)
