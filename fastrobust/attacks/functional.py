"""Function forms of the attacks: `pgd(model, x, y, eps=..., ...)` returns x_adv.

Each takes the keyword arguments of its class (PGD, FATPGD, AlternatingPGD, HypocriticalPGD,
APGD, Square, FAB, DeepFool, CarliniWagnerL2, HopSkipJump, MIFGSM; see their docstrings for formulas and
defaults), optional `targets` (the classes with a targeted mode), and `return_result=True` to
get the AttackResult instead of x_adv.
"""
from __future__ import annotations

from typing import Callable, Optional, Type, Union

import torch
from torch import nn

from .alternating import AlternatingPGD
from .apgd import APGD
from .cw import CarliniWagnerL2
from .deepfool import DeepFool
from .engine import Attack
from .fab import FAB
from .fat import FATPGD
from .hop_skip_jump import HopSkipJump
from .hypocritical import HypocriticalPGD
from .mifgsm import MIFGSM
from .pgd import PGD
from .result import AttackResult
from .square import Square

Output = Union[torch.Tensor, AttackResult]


def _call(cls: Type[Attack], model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor],
          return_result: bool, kwargs) -> Output:
    attack = cls(model, **kwargs)
    return attack.run(x, y, targets) if return_result else attack(x, y, targets)


def _function(cls: Type[Attack], name: str, what: str, takes_targets: bool) -> Callable[..., Output]:
    """The function form of an attack class: f(model, x, y[, targets], *, return_result, **kwargs)."""
    if takes_targets:
        def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
                   return_result: bool = False, **kwargs) -> Output:
            return _call(cls, model, x, y, targets, return_result, kwargs)
    else:
        def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, return_result: bool = False,
                   **kwargs) -> Output:
            return _call(cls, model, x, y, None, return_result, kwargs)
    attack.__name__ = attack.__qualname__ = name
    attack.__doc__ = f"{what} (see fastrobust.attacks.{cls.__name__})."
    return attack


pgd = _function(PGD, "pgd", "PGD", True)
fat_pgd = _function(FATPGD, "fat_pgd", "FAT's early-stopped PGD", False)
alternating_pgd = _function(AlternatingPGD, "alternating_pgd", "Alternating-objectives PGD", False)
hypocritical_pgd = _function(HypocriticalPGD, "hypocritical_pgd", "Hypocritical examples by PGD descent", False)
apgd = _function(APGD, "apgd", "APGD-CE / APGD-DLR / APGD-T", True)
square = _function(Square, "square", "The Square attack", True)
fab = _function(FAB, "fab", "FAB / FAB-T", True)
deepfool = _function(DeepFool, "deepfool", "DeepFool", False)
cw_l2 = _function(CarliniWagnerL2, "cw_l2", "Carlini-Wagner L2", True)
hop_skip_jump = _function(HopSkipJump, "hop_skip_jump", "HopSkipJump", True)
mifgsm = _function(MIFGSM, "mifgsm", "MI-FGSM (momentum iterative FGSM)", True)
