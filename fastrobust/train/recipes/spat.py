"""SPAT: self-paced adversarial training with hard-class-pair reweighting (Hou, Han, Li;
AAAI 2023, arXiv 2210.15068; official spat.py / train_cifar10.py; spec/algorithms.md §5)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch.nn.functional as F

from .base import BatchOutput, Recipe, StepContext, register_recipe
from .losses import (CosineHead, GaussianStartPGD, attack_kwargs, check_int, check_real, eval_logits, float_logits,
                     install_cosine_head, output_logits, spat_margin_logits, spat_objective, spat_robust_rows)


@register_recipe
class SPAT(Recipe):
    """SPAT: loss = CE(s * z~(x), y) + beta * (1/B) sum_i sum_j k_ij (k_ij + n).

    Cosine head: prepare() replaces the model's last nn.Linear by a CosineHead (same
    in_features, initialised with the Linear's weight, no bias): z = cos(features, w_k) in
    [-1, 1], and the model outputs s * z (so evaluation sees the trained softmax).

    Hard-class-pair reweighting, natural term: the cosine logits are reweighted before the CE,
        z~_y = (1 + m - z_y) * z_y,   z~_j = (z_j + m) * z_j  (j != y),
    so the target class gets a weight that grows as its cosine falls (a hard positive) and each
    other class j a weight that grows with its cosine (a hard negative: the pair (y, j) is
    confusable). Within CE(s * z~, y) the pairs (y, j) with a low z_y and a high z_j therefore
    dominate, Circle-loss style; the weights are part of the graph (not detached), as official.

    Self-paced robust term: with p = softmax(s * z(x)) and q = softmax(s * z(x_adv)), the
    per-class KL components k_ij = p_ij (log p_ij - log q_ij) enter as k_ij (k_ij + n): each
    class's KL contribution is weighted by (k_ij + n), so the classes (pairs of true/adversarial
    confusions) whose probability the attack moves most get the largest weight, and n keeps a
    floor weight for the others; a plain KL would weight them all alike.

    Attack: x_adv maximises the recipe's own robust term, row by row (the attacks'
    loss=callable hook; p(x) from an eval-mode forward), by sign-step PGD from x + 0.001*N(0, 1),
    projected onto the eps-ball and [0, 1], last iterate, in eval mode (official).

    Options (official CIFAR-10 defaults): eps=0.031, alpha=0.007, steps=10, beta=6.0, s=8.0,
    m=0.2, n=0.2. Differences from the official code: the official head renormalises the fc
    weight in place each forward and keeps an fc bias, and its model outputs the unscaled
    cosine; here the head is an exact cosine (no bias) and outputs s * z.
    extras: loss_natural, loss_robust.
    """

    name = "spat"

    def __init__(self, eps: float = 0.031, alpha: Optional[float] = None, steps: int = 10, beta: float = 6.0,
                 s: float = 8.0, m: float = 0.2, n: float = 0.2):
        self.eps = check_real(eps, "eps")
        self.alpha = 0.007 if alpha is None else check_real(alpha, "alpha")
        self.steps = check_int(steps, "steps", 0)
        self.beta = check_real(beta, "beta")
        self.s = check_real(s, "s", 0.0, strict=True)
        self.m = check_real(m, "m")
        self.n = check_real(n, "n")
        self._checked = False

    def prepare(self, model, num_classes):
        install_cosine_head(model, num_classes, self.s)
        self._checked = True
        return model

    def _check_model(self, model) -> None:
        if self._checked:
            return
        heads = [mod for mod in model.modules() if isinstance(mod, CosineHead)]
        if not heads or heads[-1].scale != self.s:
            raise ValueError("spat: the model has no cosine head of scale s; call recipe.prepare(model, "
                             "num_classes) before training")
        self._checked = True

    def depends_on_total_epochs(self) -> bool:
        return False  # nothing here reads the run's total epochs: a finished run can be extended

    def batch_loss(self, model, x, y, ctx: StepContext) -> BatchOutput:
        self._check_model(model)
        objective = spat_objective(eval_logits(model, x, ctx.autocast_dtype), self.n)
        x_adv = GaussianStartPGD(model, eps=self.eps, alpha=self.alpha, steps=self.steps, loss=objective,
                                 keep="last", **attack_kwargs(ctx))(x, y)
        logits = output_logits(model(x))          # s * z(x)
        adv_logits = output_logits(model(x_adv))  # s * z(x_adv)
        natural = F.cross_entropy(spat_margin_logits(float_logits(logits) / self.s, y, self.s, self.m), y)
        robust = spat_robust_rows(logits, adv_logits, self.n).mean()
        return BatchOutput(natural + self.beta * robust, logits.detach(), adv_logits.detach(),
                           {"loss_natural": natural.detach(), "loss_robust": robust.detach()})

    def options(self) -> Dict[str, Any]:
        return dict(eps=self.eps, alpha=self.alpha, steps=self.steps, beta=self.beta, s=self.s, m=self.m, n=self.n)
