"""margin_loss(logits, labels, targets=None, kind="cw"|"dlr", kappa=inf): per-sample CW margin
and DLR losses (to be maximised by an attack) as one fused op, forward and backward.

PyTorch has no single op for either: the eager versions sort or mask the logits and gather
several times per step. The formulas are in fastrobust.reference.margin_loss. Ties between
logits go to the lowest class index.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._extension import warn_fallback
from ._registration import has_op, register_differentiable_op
from .._checks.common import real_number
from .._checks.margin_loss import check_margin_loss_args, check_margin_loss_backward_args
from ..reference.margin_loss import margin_loss as _reference_margin_loss


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, targets: Optional[torch.Tensor] = None,
                kind: str = "cw", kappa: float = math.inf) -> torch.Tensor:
    """Per-sample CW margin or DLR loss (N,) of (N, classes) logits; differentiable in logits.

    cw:  min(max_{i!=y} z_i - z_y, kappa), targeted min(z_t - max_{i!=t} z_i, kappa).
    dlr: -(z_y - max_{i!=y} z_i)/(z_pi1 - z_pi3 + 1e-12),
         targeted -(z_y - z_t)/(z_pi1 - (z_pi3 + z_pi4)/2 + 1e-12).
    labels and targets: int64 class indices in [0, classes) (checked on the host for CPU tensors,
    by a device-side assert on CUDA).

    Non-finite values: a NaN logit anywhere in a row makes that row's loss and gradient NaN and
    nothing else; infinite logits follow the formulas in IEEE arithmetic (inf - inf is NaN,
    and min(NaN, kappa) stays NaN).
    """
    if has_op("fastrobust", "margin_loss"):
        return torch.ops.fastrobust.margin_loss(logits, labels, targets, kind, real_number(kappa, "kappa", finite=False))
    warn_fallback("margin_loss")
    return _reference_margin_loss(logits, labels, targets, kind, kappa)


def _fake_margin_loss(logits, labels, targets, kind, kappa):
    check_margin_loss_args(logits, labels, targets, kind, kappa)
    return logits.new_empty((logits.shape[0],))


def _fake_margin_loss_backward(grad_loss, logits, labels, targets, kind, kappa):
    check_margin_loss_backward_args(grad_loss, logits, labels, targets, kind, kappa)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, labels, targets, kind, kappa = inputs
    ctx.save_for_backward(logits, labels, targets)
    ctx.kind, ctx.kappa = kind, kappa


def _backward(backward_op, ctx, grad_loss):
    logits, labels, targets = ctx.saved_tensors
    return backward_op(grad_loss, logits, labels, targets, ctx.kind, ctx.kappa), None, None, None, None


register_differentiable_op("margin_loss", _fake_margin_loss, _fake_margin_loss_backward, _setup_context, _backward)
