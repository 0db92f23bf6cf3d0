"""Standard training: cross-entropy on the clean batch (the baseline of every robustness table)."""
from __future__ import annotations

import torch.nn.functional as F

from .base import BatchOutput, Recipe, StepContext, register_recipe


@register_recipe
class Standard(Recipe):
    """loss = CE(model(x), y). No attack, no options; eps (given by the trainer to every
    recipe) is accepted and ignored here (the trainer still evaluates PGD accuracy at it)."""

    name = "standard"

    def __init__(self, eps: float = 8 / 255):
        self.eps = eps

    def depends_on_total_epochs(self) -> bool:
        return False  # nothing here reads the run's total epochs: a finished run can be extended

    def batch_loss(self, model, x, y, ctx: StepContext) -> BatchOutput:
        logits = model(x)
        return BatchOutput(loss=F.cross_entropy(logits.float(), y), logits=logits.detach())
