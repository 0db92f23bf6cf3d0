"""AttackResult: what `Attack.run` returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttackResult:
    """The outcome of one attack call.

    x_adv:     adversarial inputs, same shape/dtype/device/order as the clean inputs, detached.
    success:   bool (N,): the attack's goal holds at x_adv (untargeted: misclassified;
               targeted: the target class is predicted; hypocritical: correctly classified).
    loss:      float32 (float64 for float64 x) (N,): the objective the attack maximises, at x_adv (for HypocriticalPGD
               that is -CE; for AlternatingPGD the CW margin, the one scale shared by its stages).
    forwards:  model forward passes summed over rows (sample-passes), restarts included.
    backwards: input-gradient passes, counted the same way.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor
    forwards: int
    backwards: int
