"""Per-row attack losses (float32, to be maximised) and attack goals, computed from logits."""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..ops.margin_loss import margin_loss

LOSSES = ("ce", "cw", "dlr")


def check_loss_name(loss: str, name: str = "loss") -> str:
    if loss not in LOSSES:
        raise ValueError(f"{name} must be one of {LOSSES}, got {loss!r}")
    return loss


def check_loss(loss, name: str = "loss"):
    """A loss name, or a callable loss(output, y, targets) -> (N,) of the model's whole output."""
    return loss if callable(loss) else check_loss_name(loss, name)


def objective(kind, output, y: torch.Tensor, targets: Optional[torch.Tensor] = None,
              kappa: float = math.inf) -> torch.Tensor:
    """Per-row loss to maximise from a ModelOutput: attack_loss of its logits for a loss name;
    for a callable, kind(output.raw, y, targets), the model's whole output, e.g. a
    CIFS network's (logits, [probe logits]) and fastrobust.nn.cifs_loss(..., reduction="none")."""
    if not callable(kind):
        return attack_loss(kind, output.logits, y, targets, kappa)
    loss = kind(output.raw, y, targets)
    if not isinstance(loss, torch.Tensor) or loss.shape != (output.logits.shape[0],):
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss: a callable loss must return one value per row ({output.logits.shape[0]},), got {got}")
    return loss.to(output.logits.dtype)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample CE to maximise: CE(z, y) untargeted, -CE(z, t) targeted."""
    if targets is None:
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def attack_loss(kind: str, logits: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None,
                kappa: float = math.inf) -> torch.Tensor:
    """Per-row loss to maximise, in float32 (float64 for float64 logits).

    ce:  CE(z, y), targeted -CE(z, t).
    cw:  the CW margin (fastrobust.ops.margin_loss, clamped at kappa), targeted on t.
    dlr: the DLR loss, targeted -(z_y - z_t)/(z_pi1 - (z_pi3 + z_pi4)/2).
    """
    logits = logits if logits.dtype == torch.float64 else logits.float()
    if kind == "ce":
        return cross_entropy(logits, y, targets)
    return margin_loss(logits, y, targets, kind=kind, kappa=kappa if kind == "cw" else math.inf)


def reached(goal: str, logits: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """bool (N,): whether each row's prediction meets the attack's goal: "fooled" (not y),
    "target" (the row's target) or "correct" (y). Ties between logits go to the lowest class."""
    pred = logits.argmax(dim=1)
    if goal == "fooled":
        return pred != y
    if goal == "target":
        return pred == targets
    return pred == y


def check_target_classes(n_target_classes: int, classes: int) -> None:
    if n_target_classes > classes - 1:
        raise ValueError(f"n_target_classes must be at most classes - 1 = {classes - 1}, got {n_target_classes}")


def ranked_targets(logits: torch.Tensor, n_target_classes: int, restarts: int) -> torch.Tensor:
    """(n_target_classes * restarts, B): the classes ranked 2nd, 3rd, ... by the clean logits,
    each repeated for its restarts (class-major): AutoAttack's target order."""
    ranked = logits.sort(dim=1)[1]
    per_class = torch.stack([ranked[:, -c] for c in range(2, n_target_classes + 2)])
    return per_class.repeat_interleave(restarts, dim=0)
