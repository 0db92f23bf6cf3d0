"""TRADES (Zhang et al., ICML 2019): CE(f(x), y) + beta * KL(p(x) || p(x_adv))."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch.nn.functional as F

from .base import BatchOutput, Recipe, StepContext, register_recipe
from .losses import (GaussianStartPGD, attack_kwargs, check_int, check_real, eval_logits, float_logits,
                     kl_batchmean, kl_objective)


@register_recipe
class TRADES(Recipe):
    """TRADES: loss = CE(f(x), y) + beta * KL(p(x) || p(x_adv)), the KL a batch mean
    (official (1/B) * KLDivLoss(sum)(log_softmax(f(x_adv)), softmax(f(x)))), both forwards in
    train mode, gradients through both p(x) and p(x_adv) (as the official code).

    x_adv maximises the per-sample KL(p(x) || p(x_adv)) with p(x) from an eval-mode forward:
    sign-step PGD from x + 0.001*N(0, 1) (the KL has zero gradient at x itself), projected onto
    the eps-ball and [0, 1], the last iterate kept (official trades_loss), in eval mode.

    Options (official CIFAR-10 training defaults, train_trades_cifar10.py):
      eps=0.031, alpha=0.007, steps=10, beta=6.0
    extras: loss_natural, loss_robust (the KL).
    """

    name = "trades"

    def __init__(self, eps: float = 0.031, alpha: Optional[float] = None, steps: int = 10, beta: float = 6.0):
        self.eps = check_real(eps, "eps")
        self.alpha = 0.007 if alpha is None else check_real(alpha, "alpha")
        self.steps = check_int(steps, "steps", 0)
        self.beta = check_real(beta, "beta")

    def depends_on_total_epochs(self) -> bool:
        return False  # nothing here reads the run's total epochs: a finished run can be extended

    def batch_loss(self, model, x, y, ctx: StepContext) -> BatchOutput:
        objective = kl_objective(eval_logits(model, x, ctx.autocast_dtype))
        x_adv = GaussianStartPGD(model, eps=self.eps, alpha=self.alpha, steps=self.steps, loss=objective,
                                 keep="last", **attack_kwargs(ctx))(x, y)
        logits = model(x)
        adv_logits = model(x_adv)
        natural = F.cross_entropy(float_logits(logits), y)
        robust = kl_batchmean(logits, adv_logits)
        return BatchOutput(natural + self.beta * robust, logits.detach(), adv_logits.detach(),
                           {"loss_natural": natural.detach(), "loss_robust": robust.detach()})

    def options(self) -> Dict[str, Any]:
        return dict(eps=self.eps, alpha=self.alpha, steps=self.steps, beta=self.beta)
