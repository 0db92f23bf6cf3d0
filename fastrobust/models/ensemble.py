"""LogitEnsemble: several models as one, their logits averaged (the surrogate of transfer
attacks; J-SIGR's official attack fuses 8 ImageNet models this way)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn


class LogitEnsemble(nn.Module):
    """forward(x) = sum_i w_i * model_i(x) / sum_i w_i (weights default to 1 each).

    A model returning a tuple contributes its first element (the logits). The members keep
    their own modes: train()/eval() on the ensemble sets them all, as for any nn.Module.
    """

    def __init__(self, models: Sequence[nn.Module], weights: Optional[Sequence[float]] = None):
        super().__init__()
        models = list(models)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise ValueError("models must be a non-empty sequence of nn.Module")
        if weights is None:
            weights = [1.0] * len(models)
        weights = [float(w) if not isinstance(w, bool) and isinstance(w, (int, float)) else math.nan for w in weights]
        if len(weights) != len(models):
            raise ValueError(f"weights must have one value per model ({len(models)}), got {len(weights)}")
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite numbers >= 0 with a positive sum, got {weights}")
        self.members = nn.ModuleList(models)
        self.weights = weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for model, w in zip(self.members, self.weights):
            out = model(x)
            logits = out[0] if isinstance(out, (tuple, list)) else out
            term = logits * w
            total = term if total is None else total + term
        return total / sum(self.weights)
