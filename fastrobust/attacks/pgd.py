"""PGD (Madry et al. 2018), with restarts folded into the batch."""
from __future__ import annotations

import math
from typing import Union

from torch import nn

from .engine import Attack
from .loop import KEEP_MODES, SignSteps
from .objectives import check_loss
from .starts import clean_start, uniform_start
from .validation import Scalar, check_choice, check_count, check_radius, check_restart_batch, check_targets_match


class PGD(Attack):
    """Projected gradient descent, called like torchattacks' PGD: `PGD(model, eps, alpha, steps)(x, y)`.

    L-inf: `x <- clip_[lo,hi]( clip_[x0-eps, x0+eps]( x + alpha*sign(g) ) )`;
    L2:    x <- x + alpha*g/||g||, then delta*min(1, eps/||delta||), then the box clip,
    g the input gradient of the per-sample loss: "ce" (CE; targeted -CE(t)), "cw" (CW margin,
    clamped at kappa; kappa=inf is unclamped), "dlr", or a callable loss(output, y, targets)
    -> (N,) of the model's whole output (in float32): for a model returning a tuple, its first
    element is the logits that decide success (e.g. a CIFS network and
    fastrobust.models.cifs_joint_loss, the official CIFS attack objective).

    random_start: start uniformly in the eps-ball (box-clipped), else at x.
    restarts:     R restarts, folded into the batch where they run in one pass (rows = R*B,
                  restart-major; see restart_batch); each sample gets
                  its worst case over restarts (a successful point first, else the highest loss).
    restart_batch: run k restarts per pass; between passes only the samples not yet fooled are
                  attacked again (one host synchronisation per pass). None: all in one pass;
                  "auto" (default): one per pass on the CPU, all in one pass on a GPU.
    targeted:     call with targets=t; success means predicting t.
    keep:         "success" (default): the first successful iterate, else the highest-loss one
                  (one extra forward evaluates the last iterate); "loss": the highest-loss
                  iterate; "last": the final iterate (torchattacks' output, no extra forward).
    norm="l1":    sparse L1 steps: alpha along the sign of the (1 - l1_sparsity) fraction of the
                  gradient's largest coordinates, normalised to L1 length 1, then the projection
                  onto the L1 ball within the box (attacks.l1_ball); l1_sparsity 0.95 as in
                  ART's and advertorch's SparseL1Descent.
    Defaults: eps=8/255, alpha=2/255, steps=10 (CIFAR-10 PGD-10). Common arguments: see Attack.
    """

    norms = ("linf", "l2", "l1")

    def __init__(self, model: nn.Module, eps: Scalar = 8 / 255, alpha: Scalar = 2 / 255, steps: int = 10,
                 norm="linf", random_start: bool = True, restarts: int = 1,
                 restart_batch: Union[int, str, None] = "auto",
                 targeted: bool = False, loss="ce", kappa: float = math.inf, keep: str = "success",
                 l1_sparsity: float = 0.95, **common):
        super().__init__(model, eps=eps, norm=norm, **common)
        self.alpha = check_radius(alpha, "alpha")
        self.steps = check_count(steps, "steps", 0)
        self.random_start = bool(random_start)
        self.restarts = check_count(restarts, "restarts", 1)
        self.restart_batch = check_restart_batch(restart_batch)
        self.targeted = bool(targeted)
        self.goal = "target" if self.targeted else "fooled"
        self.loss = check_loss(loss)
        if math.isnan(kappa):
            raise ValueError("kappa must not be NaN")
        self.kappa = float(kappa)
        self.keep = check_choice(keep, tuple(KEEP_MODES), "keep")
        if isinstance(l1_sparsity, bool) or not isinstance(l1_sparsity, (int, float)) or not 0 <= l1_sparsity < 1:
            raise ValueError(f"l1_sparsity must be a number in [0, 1), got {l1_sparsity!r}")
        self.l1_sparsity = float(l1_sparsity)

    def _check_targets(self, targets) -> None:
        check_targets_match(self.targeted, targets, "PGD")

    def _run_rows(self, ctx, rows, evaluate):
        x = uniform_start(rows, self.norm, self.lo, self.hi) if self.random_start else clean_start(rows)
        loop = SignSteps(self.steps, self.norm, self.lo, self.hi, loss_at=lambda t: self.loss,
                         keep=KEEP_MODES[self.keep], l1_sparsity=self.l1_sparsity)
        return loop.run(ctx, rows, x, evaluate=evaluate)
