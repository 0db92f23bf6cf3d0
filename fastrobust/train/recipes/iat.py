"""Interpolated adversarial training (Lamb et al., AISec 2019): mixup on the clean batch and on
the adversarial batch, each with its own lambda and permutation (spec/algorithms.md §5)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from ...attacks import PGD
from .base import BatchOutput, Recipe, StepContext, register_recipe
from .losses import attack_kwargs, check_int, check_real, draw_mixup, mix, mixup_cross_entropy, output_logits


@register_recipe
class IAT(Recipe):
    """IAT: loss = 1/2 * L_mix(x, y) + 1/2 * L_mix(x_adv, y), where

        L_mix(u, y) = lam * CE(f(lam*u_i + (1-lam)*u_perm(i)), y_i) + (1-lam) * CE(same, y_perm(i))

    with a separate draw (lam ~ Beta(mixup_alpha, mixup_alpha), permutation) for the clean and
    for the adversarial batch (clean first, then adversarial), all from ctx.generator. x_adv is
    PGD on the *clean* inputs (uniform random start, last iterate, eval mode), not on the mixed
    ones. Both mixed forwards run in train mode.

    Options (paper / third-party reference code, CIFAR-10):
      eps=8/255, alpha=2/255, steps=7, mixup_alpha=1.0 (lam ~ Beta(1, 1) = U(0, 1))
    BatchOutput: logits and adv_logits are None (the forwards see mixed inputs, whose argmax
    against y is no accuracy); extras: lam_clean, lam_adv, loss_clean, loss_adv.
    """

    name = "iat"

    def __init__(self, eps: float = 8 / 255, alpha: Optional[float] = None, steps: int = 7,
                 mixup_alpha: float = 1.0):
        self.eps = check_real(eps, "eps")
        self.alpha = 2 / 255 if alpha is None else check_real(alpha, "alpha")
        self.steps = check_int(steps, "steps", 0)
        self.mixup_alpha = check_real(mixup_alpha, "mixup_alpha")

    def depends_on_total_epochs(self) -> bool:
        return False  # nothing here reads the run's total epochs: a finished run can be extended

    def batch_loss(self, model, x, y, ctx: StepContext) -> BatchOutput:
        x_adv = PGD(model, eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=True, keep="last",
                    **attack_kwargs(ctx))(x, y)
        n = x.shape[0]
        lam_clean, perm_clean = draw_mixup(ctx.generator, n, self.mixup_alpha, seed=ctx.seed())
        loss_clean = mixup_cross_entropy(output_logits(model(mix(x, perm_clean, lam_clean))), y, perm_clean, lam_clean)
        lam_adv, perm_adv = draw_mixup(ctx.generator, n, self.mixup_alpha, seed=ctx.seed())
        loss_adv = mixup_cross_entropy(output_logits(model(mix(x_adv, perm_adv, lam_adv))), y, perm_adv, lam_adv)
        loss = 0.5 * (loss_clean + loss_adv)
        return BatchOutput(loss, None, None, {"lam_clean": lam_clean, "lam_adv": lam_adv,
                                              "loss_clean": loss_clean.detach(), "loss_adv": loss_adv.detach()})

    def options(self) -> Dict[str, Any]:
        return dict(eps=self.eps, alpha=self.alpha, steps=self.steps, mixup_alpha=self.mixup_alpha)
