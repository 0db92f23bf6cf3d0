"""AttackResult: what `Attack.run` returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
    nonfinite: bool (N,): the attack met a non-finite loss (NaN, +-inf) at some iterate of the
               sample (any restart). Such points are never kept and never count as successes;
               where no iterate had a finite loss, x_adv is the clean point and loss is -inf.
               nonfinite_count says how many samples met one.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor
    forwards: int
    backwards: int
    nonfinite: Optional[torch.Tensor] = None

    @property
    def nonfinite_count(self) -> int:
        """Samples whose attack met a non-finite loss (a host read on CUDA)."""
        return 0 if self.nonfinite is None else int(self.nonfinite.sum())
