"""Madry et al. (ICLR 2018) PGD adversarial training: cross-entropy on PGD examples."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch.nn.functional as F

from ...attacks import PGD
from .base import BatchOutput, Recipe, StepContext, register_recipe


@register_recipe
class PGDAT(Recipe):
    """min_theta E max_{||delta||_inf <= eps} CE(f(x + delta), y), the inner max by L-inf PGD.

    Options (defaults: the CIFAR-10 settings of Madry et al.'s config.json, MadryLab
    cifar10_challenge): eps=8/255, alpha=2/255 (None: eps/4, which is 2/255 at 8/255),
    steps=10, random_start=True (uniform in the eps-ball, box-clipped).

    The examples come from fastrobust.attacks.PGD (the fused engine; the model in eval mode
    during the attack, keep="last": the final iterate, as Madry et al.) seeded from the
    step's generator; the loss on them is then computed in TRAIN mode (BatchNorm batch
    statistics, as the papers' code). The recipe computes no clean logits (the trainer tracks
    clean accuracy with a no-grad eval forward if asked).
    """

    name = "pgd"

    def __init__(self, eps: float = 8 / 255, alpha: Optional[float] = None, steps: int = 10,
                 random_start: bool = True):
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps < math.inf:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        if alpha is None:
            alpha = eps / 4
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha < math.inf:
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.random_start = bool(random_start)

    def options(self):
        return dict(eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=self.random_start)

    def depends_on_total_epochs(self) -> bool:
        return False  # nothing here reads the run's total epochs: a finished run can be extended

    def batch_loss(self, model, x, y, ctx: StepContext) -> BatchOutput:
        attack = PGD(model, eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=self.random_start,
                     keep="last", seed=ctx.seed(), autocast=ctx.autocast_dtype, channels_last=ctx.channels_last)
        x_adv = attack(x, y)
        adv_logits = model(x_adv)
        loss = F.cross_entropy(adv_logits.float(), y)
        return BatchOutput(loss=loss, logits=None, adv_logits=adv_logits.detach())
