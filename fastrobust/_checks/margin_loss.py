"""Checks of margin_loss(logits, labels, targets, kind, kappa) and its backward."""
from __future__ import annotations

import math

import torch

from .common import check_same_device, require_tensor

KINDS = ("cw", "dlr")


def check_margin_loss_args(logits, labels, targets=None, kind="cw", kappa=math.inf):
    """Shapes, dtypes, devices and kind (the kernels check the label values)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    require_tensor(logits, "logits")
    if logits.dim() != 2:
        raise ValueError(f"logits must be a 2-D (N, classes) tensor, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must have a floating-point dtype, got {logits.dtype}")
    for name, t in (("labels", labels), ("targets", targets)):
        if t is None:
            continue
        require_tensor(t, name)
        if t.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {t.dtype}")
        if t.shape != (logits.shape[0],):
            raise ValueError(f"{name} must have shape ({logits.shape[0]},), got {tuple(t.shape)}")
    check_same_device("logits", logits, labels=labels, targets=targets)
    need = 2 if kind == "cw" else (4 if targets is not None else 3)
    if logits.shape[1] < need:
        raise ValueError(f"{kind} loss{' (targeted)' if targets is not None else ''} needs at least {need} classes, got {logits.shape[1]}")
    if math.isnan(kappa):
        raise ValueError("kappa must not be NaN")


def check_margin_loss_backward_args(grad_loss, logits, labels, targets=None, kind="cw", kappa=math.inf):
    check_margin_loss_args(logits, labels, targets, kind, kappa)
    require_tensor(grad_loss, "grad_loss")
    check_same_device("logits", logits, grad_loss=grad_loss)
    torch._check(grad_loss.shape == (logits.shape[0],),
                 lambda: f"grad_loss must have shape ({logits.shape[0]},), got {tuple(grad_loss.shape)}")
