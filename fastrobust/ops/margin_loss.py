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

from .._extension import HAS_EMU, HAS_EXT, warn_fallback
from ..reference.margin_loss import check_margin_loss_args
from ..reference.margin_loss import margin_loss as _reference_margin_loss


def _has_op() -> bool:
    return HAS_EXT and hasattr(torch.ops.fastrobust, "margin_loss")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, targets: Optional[torch.Tensor] = None,
                kind: str = "cw", kappa: float = math.inf) -> torch.Tensor:
    """Per-sample CW margin or DLR loss (N,) of (N, classes) logits; differentiable in logits.

    cw:  min(max_{i!=y} z_i - z_y, kappa), targeted min(z_t - max_{i!=t} z_i, kappa).
    dlr: -(z_y - max_{i!=y} z_i)/(z_pi1 - z_pi3 + 1e-12),
         targeted -(z_y - z_t)/(z_pi1 - (z_pi3 + z_pi4)/2 + 1e-12).
    """
    if _has_op():
        return torch.ops.fastrobust.margin_loss(logits, labels, targets, kind, float(kappa))
    warn_fallback("margin_loss")
    return _reference_margin_loss(logits, labels, targets, kind, kappa)


def _fake_margin_loss(logits, labels, targets, kind, kappa):
    check_margin_loss_args(logits, labels, targets, kind, kappa)
    return logits.new_empty((logits.shape[0],))


def _fake_margin_loss_backward(grad_loss, logits, labels, targets, kind, kappa):
    check_margin_loss_args(logits, labels, targets, kind, kappa)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, labels, targets, kind, kappa = inputs
    ctx.save_for_backward(logits, labels, targets)
    ctx.kind, ctx.kappa = kind, kappa


def _make_backward(namespace):
    backward_op = getattr(torch.ops, namespace)._margin_loss_backward

    def _backward(ctx, grad_loss):
        logits, labels, targets = ctx.saved_tensors
        grad = backward_op(grad_loss, logits, labels, targets, ctx.kind, ctx.kappa)
        return grad, None, None, None, None

    return _backward


def _register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::margin_loss")(_fake_margin_loss)
    torch.library.register_fake(f"{namespace}::_margin_loss_backward")(_fake_margin_loss_backward)
    torch.library.register_autograd(f"{namespace}::margin_loss", _make_backward(namespace),
                                    setup_context=_setup_context)


if _has_op():
    _register("fastrobust")
if HAS_EMU and hasattr(torch.ops.fastrobust_emu, "margin_loss"):
    _register("fastrobust_emu")
