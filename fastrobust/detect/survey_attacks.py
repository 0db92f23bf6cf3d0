"""The survey's attacks (methods-more.md §1.2, ART in the official code) on the package's
engine, with eps in the survey's /256 units (32 -> 0.125; the survey's grid is /256, not /255).

    fgsm      FGSM at eps
    bim       BIM: steps of 0.01, int(eps * 256 * 1.25) of them, no random start
    pgd       PGD-L-inf: steps of 0.01, 100 of them, no random start (ART's defaults)
    cw        PGD-L-inf on the CW margin loss, 100 steps of 0.01 (ART's CarliniLInfMethod is its
              own iterative method; this is its loss under the same radius)
    deepfool  DeepFool-L2, unbounded, overshoot 0.02 (ART's defaults)
    square    the Square attack, L-inf at eps, 200 queries (the survey's 200 iterations)
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

SURVEY_ATTACKS = ("fgsm", "bim", "pgd", "cw", "deepfool", "square")
DEFAULT_ATTACKS = ("fgsm", "pgd", "cw", "square")


def survey_attack(name: str, model: nn.Module, eps: float, seed: int = 0
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """attack(x, y) -> x_adv for the survey's attack `name` at radius eps (pixel scale)."""
    from ..attacks import PGD, DeepFool, Square

    if name == "fgsm":
        return PGD(model, eps=eps, alpha=eps, steps=1, random_start=False, keep="last", seed=seed)
    if name == "bim":
        return PGD(model, eps=eps, alpha=0.01, steps=max(1, int(eps * 256 * 1.25)), random_start=False, seed=seed)
    if name == "pgd":
        return PGD(model, eps=eps, alpha=0.01, steps=100, random_start=False, seed=seed)
    if name == "cw":
        return PGD(model, eps=eps, alpha=0.01, steps=100, random_start=False, loss="cw", seed=seed)
    if name == "deepfool":
        return DeepFool(model, seed=seed)
    if name == "square":
        return Square(model, eps=eps, queries=200, seed=seed)
    raise ValueError(f"attacks: unknown attack {name!r}; choose from {', '.join(SURVEY_ATTACKS)}")


def check_attacks(names) -> tuple:
    names = tuple(names)
    bad = [n for n in names if n not in SURVEY_ATTACKS]
    if not names or bad:
        raise ValueError(f"attacks must be a non-empty list of {', '.join(SURVEY_ATTACKS)}, got {list(names)!r}")
    return names


def attacks_for(model: nn.Module, names, eps: float, seed: int = 0) -> Dict[str, Callable]:
    return {name: survey_attack(name, model, eps, seed) for name in check_attacks(names)}
