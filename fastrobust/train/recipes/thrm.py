"""THRM: trading off hypocritical risk (Tao, Feng, Yi, Chen; AAAI 2022, arXiv 2012.14738;
official tradeoff.py thrm_loss; spec/algorithms.md §5)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ...attacks import HypocriticalPGD
from .base import BatchOutput, Recipe, StepContext, register_recipe
from .losses import attack_kwargs, check_int, check_real, float_logits, kl_batchmean, output_logits


@register_recipe
class THRM(Recipe):
    """THRM: loss = CE(f(x), y) + beta * KL(p(x) || p(x_hyp)), the KL a batch mean (official
    nn.KLDivLoss(reduction="batchmean")(log_softmax(f(x_hyp)), softmax(f(x)))), gradients
    through both distributions.

    x_hyp are hypocritical examples: HypocriticalPGD, PGD *descent* on CE(f(x + delta), y)
    (towards the true class) from x + 0.01*N(0, 1), last iterate, eval mode, on every sample
    of the batch. As in the official code, x and x_hyp go through the model in one train-mode
    forward of the concatenated batch (BatchNorm sees both halves together).

    Options (official defaults): eps=8/255, alpha=None (eps/4), steps=10, beta=6.0.
    BatchOutput: logits = clean logits; adv_logits = None (x_hyp is no adversarial batch);
    extras: loss_natural, loss_robust (the KL), hyp_acc (accuracy on x_hyp, train mode).
    """

    name = "thrm"

    def __init__(self, eps: float = 8 / 255, alpha: Optional[float] = None, steps: int = 10, beta: float = 6.0):
        self.eps = check_real(eps, "eps")
        self.alpha = self.eps / 4 if alpha is None else check_real(alpha, "alpha")
        self.steps = check_int(steps, "steps", 0)
        self.beta = check_real(beta, "beta")

    def depends_on_total_epochs(self) -> bool:
        return False  # nothing here reads the run's total epochs: a finished run can be extended

    def batch_loss(self, model, x, y, ctx: StepContext) -> BatchOutput:
        x_hyp = HypocriticalPGD(model, eps=self.eps, alpha=self.alpha, steps=self.steps, keep="last",
                                **attack_kwargs(ctx))(x, y)
        both = output_logits(model(torch.cat((x, x_hyp.to(x.dtype)), dim=0)))
        logits, hyp_logits = both[: x.shape[0]], both[x.shape[0]:]
        natural = F.cross_entropy(float_logits(logits), y)
        robust = kl_batchmean(logits, hyp_logits)
        hyp_acc = (hyp_logits.detach().argmax(dim=1) == y).float().mean()
        return BatchOutput(natural + self.beta * robust, logits.detach(), None,
                           {"loss_natural": natural.detach(), "loss_robust": robust.detach(), "hyp_acc": hyp_acc})

    def options(self) -> Dict[str, Any]:
        return dict(eps=self.eps, alpha=self.alpha, steps=self.steps, beta=self.beta)
