"""A CIFS network seen by the attacks. fastrobust.attacks call model(x) in eval mode; a CIFS
network returns (logits, [probe_logits, ...]).

- Attack the final logits: wrap the network in CIFSLogits (plain (N, classes) logits).
- Attack the official joint loss (CE of the final logits and of every probe): give the
  network itself to the attack with loss=cifs_joint_loss(beta); the attack judges success on
  the first output, the final logits:
      PGD(model, eps=8/255, loss=cifs_joint_loss(beta=2.0))(x, y)
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..nn.cifs import check_number, cifs_loss


def _split(out):
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not isinstance(out[0], torch.Tensor):
        raise ValueError("model must return (logits, [probe_logits, ...]) as a CIFS network does, "
                         f"got {type(out).__name__}")
    return out[0], out[1]


class CIFSLogits(nn.Module):
    """forward(x) = model(x)[0], the final logits of a CIFS network (e.g. ResNet18CIFS).

    The attacks run the model in eval mode, where CIFS takes the probe's own top-2 predictions,
    so no labels are needed.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _split(self.model(x))[0]


def cifs_joint_loss(beta: float = 2.0) -> Callable:
    """The official CIFS attack objective as a loss for fastrobust.attacks (PGD, APGD):
    loss(output, y, targets) = cifs_loss(final, probe_logits, y, beta, reduction="none") for a
    network's output (final, [probe_logits, ...]); untargeted only."""
    beta = check_number(beta, "beta", 0, inclusive=True)

    def loss(output, y: torch.Tensor, targets: Optional[torch.Tensor]) -> torch.Tensor:
        if targets is not None:
            raise ValueError("targets: the CIFS joint loss is untargeted")
        final, probes = _split(output)
        return cifs_loss(final, probes, y, beta=beta, reduction="none")

    return loss
