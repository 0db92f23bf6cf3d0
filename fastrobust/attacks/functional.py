"""Function forms of the attacks: `pgd(model, x, y, eps=..., ...)` returns x_adv.

Each takes the keyword arguments of its class (PGD, FATPGD, AlternatingPGD, HypocriticalPGD,
APGD, Square, DeepFool, CarliniWagnerL2, HopSkipJump; see their docstrings for formulas and defaults), optional `targets`, and
`return_result=True` to get the AttackResult instead of x_adv.
"""
from __future__ import annotations

from typing import Optional, Type, Union

import torch
from torch import nn

from .alternating import AlternatingPGD
from .apgd import APGD
from .cw import CarliniWagnerL2
from .deepfool import DeepFool
from .engine import Attack
from .fat import FATPGD
from .hop_skip_jump import HopSkipJump
from .hypocritical import HypocriticalPGD
from .pgd import PGD
from .result import AttackResult
from .square import Square

Output = Union[torch.Tensor, AttackResult]


def _call(cls: Type[Attack], model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor],
          return_result: bool, kwargs) -> Output:
    attack = cls(model, **kwargs)
    return attack.run(x, y, targets) if return_result else attack(x, y, targets)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
        return_result: bool = False, **kwargs) -> Output:
    """PGD (see fastrobust.attacks.PGD)."""
    return _call(PGD, model, x, y, targets, return_result, kwargs)


def fat_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, return_result: bool = False, **kwargs) -> Output:
    """FAT's early-stopped PGD (see fastrobust.attacks.FATPGD)."""
    return _call(FATPGD, model, x, y, None, return_result, kwargs)


def alternating_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, return_result: bool = False,
                    **kwargs) -> Output:
    """Alternating-objectives PGD (see fastrobust.attacks.AlternatingPGD)."""
    return _call(AlternatingPGD, model, x, y, None, return_result, kwargs)


def hypocritical_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, return_result: bool = False,
                     **kwargs) -> Output:
    """Hypocritical examples by PGD descent (see fastrobust.attacks.HypocriticalPGD)."""
    return _call(HypocriticalPGD, model, x, y, None, return_result, kwargs)


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
         return_result: bool = False, **kwargs) -> Output:
    """APGD-CE / APGD-DLR / APGD-T (see fastrobust.attacks.APGD)."""
    return _call(APGD, model, x, y, targets, return_result, kwargs)


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
           return_result: bool = False, **kwargs) -> Output:
    """The Square attack (see fastrobust.attacks.Square)."""
    return _call(Square, model, x, y, targets, return_result, kwargs)


def deepfool(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, return_result: bool = False, **kwargs) -> Output:
    """DeepFool (see fastrobust.attacks.DeepFool)."""
    return _call(DeepFool, model, x, y, None, return_result, kwargs)


def cw_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
          return_result: bool = False, **kwargs) -> Output:
    """Carlini-Wagner L2 (see fastrobust.attacks.CarliniWagnerL2)."""
    return _call(CarliniWagnerL2, model, x, y, targets, return_result, kwargs)


def hop_skip_jump(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
                  return_result: bool = False, **kwargs) -> Output:
    """HopSkipJump (see fastrobust.attacks.HopSkipJump)."""
    return _call(HopSkipJump, model, x, y, targets, return_result, kwargs)
