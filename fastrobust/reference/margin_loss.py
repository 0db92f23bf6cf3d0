"""Reference of the per-sample margin losses on logits: CW margin and DLR.

Every loss is one value per row, to be *maximised* by an attack:

  cw,  untargeted:  min(max_{i!=y} z_i - z_y, kappa)
  cw,  targeted:    min(z_t - max_{i!=t} z_i, kappa)
  dlr, untargeted:  -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12)
  dlr, targeted:    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)

z_pi1 >= z_pi2 >= ... are the sorted logits (Croce & Hein 2020; AutoAttack's dlr_loss and
dlr_loss_targeted). kappa = inf leaves the CW margin unclamped (Antoniou et al.'s form);
cifar10_challenge's -max(z_y - max z_i + kappa, 0) is this loss minus kappa.
Computed in float32 (float64 for float64 logits), returned in the logits' dtype.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._checks.common import check_class_indices
from .._checks.margin_loss import check_margin_loss_args

DLR_TINY = 1e-12


def _max_other(z, exclude):
    """max_{i != exclude} z_i per row."""
    masked = z.scatter(1, exclude[:, None], -math.inf)
    return masked.max(dim=1).values


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, targets: Optional[torch.Tensor] = None,
                kind: str = "cw", kappa: float = math.inf) -> torch.Tensor:
    check_margin_loss_args(logits, labels, targets, kind, kappa)
    for name, t in (("labels", labels), ("targets", targets)):
        if t is not None:
            check_class_indices(t, logits.shape[1], name)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    z_y = z.gather(1, labels[:, None])[:, 0]
    if kind == "cw":
        if targets is None:
            loss = _max_other(z, labels) - z_y
        else:
            loss = z.gather(1, targets[:, None])[:, 0] - _max_other(z, targets)
        loss = loss.clamp(max=kappa)
    else:
        top = z.topk(4 if targets is not None else 3, dim=1).values
        if targets is None:
            loss = -(z_y - _max_other(z, labels)) / (top[:, 0] - top[:, 2] + DLR_TINY)
        else:
            z_t = z.gather(1, targets[:, None])[:, 0]
            loss = -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_TINY)
    return loss.to(logits.dtype)
