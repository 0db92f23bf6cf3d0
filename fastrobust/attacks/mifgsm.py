"""MI-FGSM (Dong et al., CVPR 2018): momentum iterative FGSM, the transfer attack of the
NIPS-2017 competition and of J-SIGR's official attack script (spec/methods-more.md §3.2)."""
from __future__ import annotations

from typing import Optional

from torch import nn

from .engine import Attack
from .loop import KEEP_MODES, SignSteps
from .objectives import check_loss
from .starts import clean_start
from .validation import Scalar, check_choice, check_count, check_radius, check_targets_match


class MIFGSM(Attack):
    """Momentum iterative FGSM, called like torchattacks' MIFGSM: `MIFGSM(model, eps, steps)(x, y)`.

    g <- momentum * g + grad / mean|grad| (per sample, g = 0 at the start), then the PGD step
    along g: L-inf x <- clip(clip_eps(x + alpha * sign(g))), L2 the normalised step and the
    projection. No random start; by default the last iterate (keep="last", as the official
    code and torchattacks).

    Defaults are the official script's: eps=16/255, steps=10, alpha=eps/steps (1.6/255),
    momentum=1.0. The official code attacks the label the (ensemble) model predicts on the clean
    input: pass that prediction as y to reproduce it. For transfer attacks, craft on a surrogate
    (or a fastrobust.models.LogitEnsemble of several) and evaluate the target on the result.
    Common arguments (norm, lo, hi, autocast, channels_last, cuda_graph, seed): see Attack.
    """

    norms = ("linf", "l2")

    def __init__(self, model: nn.Module, eps: Scalar = 16 / 255, steps: int = 10, alpha: Optional[Scalar] = None,
                 momentum: float = 1.0, norm="linf", targeted: bool = False, loss="ce", keep: str = "last",
                 **common):
        super().__init__(model, eps=eps, norm=norm, **common)
        self.steps = check_count(steps, "steps", 1)
        self.alpha = self.eps / self.steps if alpha is None else check_radius(alpha, "alpha")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < float("inf"):
            raise ValueError(f"momentum must be a finite number >= 0, got {momentum!r}")
        self.momentum = float(momentum)
        self.targeted = bool(targeted)
        self.goal = "target" if self.targeted else "fooled"
        self.loss = check_loss(loss)
        self.keep = check_choice(keep, tuple(KEEP_MODES), "keep")

    def _check_targets(self, targets) -> None:
        check_targets_match(self.targeted, targets, "MIFGSM")

    def _run_rows(self, ctx, rows, evaluate):
        loop = SignSteps(self.steps, self.norm, self.lo, self.hi, loss_at=lambda t: self.loss,
                         keep=KEEP_MODES[self.keep], momentum=self.momentum)
        return loop.run(ctx, rows, clean_start(rows), evaluate=evaluate)
