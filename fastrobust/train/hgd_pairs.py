"""HGD's training inputs, made per batch by the attack engine (no image folders on disk):
each clean image gets one of the official kinds of perturbation (spec/methods-more.md §4.3),
and the denoiser learns to map it back to the clean image.

    x_in, kinds = hgd_inputs(target, x, y, generator)       # (adversarial-or-not, clean) = (x_in, x)

Kinds, drawn uniformly per image (the official training list has one sample per
(attack, image)):
    clean    x itself ("noop")
    noise    x + uniform noise in [-eps, eps] per pixel, clipped ("random_noise")
    fgsm     FGSM at eps on the attack model
    ifgsm2   I-FGSM, 2 steps of eps/2, from x (momentum 0)
    ifgsm4   I-FGSM, 4 steps of eps/4
eps per image: an integer k drawn uniformly from 1..15, eps = k/255 of the data range
(`random_eps` of the official attacks, MAX_EPSILON 16). The attacks use the label the attack
model predicts on the clean image (the official attacks' step-0 prediction; label="true" uses
y), CE loss, the last iterate. The attack model is the frozen target, or a
fastrobust.models.LogitEnsemble of it and `others` (the official ensemble attacks average the
logits of Inception-v3, ResNet-v2-50 and Inception-ResNet-v2).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..attacks import PGD
from .recipes.losses import output_logits

KINDS = ("clean", "noise", "fgsm", "ifgsm2", "ifgsm4")
STEPS = {"fgsm": 1, "ifgsm2": 2, "ifgsm4": 4}


def check_kinds(kinds: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(kinds, str) or not hasattr(kinds, "__iter__"):
        raise ValueError(f"kinds must be a sequence of {', '.join(KINDS)}, got {kinds!r}")
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise ValueError(f"kinds must be a non-empty sequence of {', '.join(KINDS)}, got {list(kinds)!r}")
    return kinds


def hgd_inputs(target: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, *,
               kinds: Sequence[str] = KINDS, eps_levels: Tuple[int, int] = (1, 15), lo: float = 0.0,
               hi: float = 1.0, label: str = "prediction", others: Sequence[nn.Module] = (),
               seed: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x_in, kind): the perturbed batch (detached) and each row's index into `kinds`.

    eps_levels: (first, last) of the integer levels k, eps = k / 255 * (hi - lo).
    seed: the attacks' seed (they draw nothing random here: no random start).
    """
    kinds = check_kinds(kinds)
    if label not in ("prediction", "true"):
        raise ValueError(f"label must be 'prediction' or 'true', got {label!r}")
    first, last = eps_levels
    if isinstance(first, bool) or not isinstance(first, int) or not isinstance(last, int) or not 1 <= first <= last:
        raise ValueError(f"eps_levels must be two integers 1 <= first <= last, got {eps_levels!r}")
    n = x.shape[0]
    dev = generator.device
    kind = torch.randint(len(kinds), (n,), generator=generator, device=dev).to(x.device)
    level = torch.randint(first, last + 1, (n,), generator=generator, device=dev).to(x.device)
    eps = level.to(x.dtype) / 255.0 * (hi - lo)
    x = x.detach()
    out = x.clone()
    model = target if not others else _ensemble(target, others)
    if label == "prediction" and any(k in STEPS for k in kinds):
        with torch.no_grad():
            y = output_logits(model(x)).argmax(1)
    for index, name in enumerate(kinds):
        rows = (kind == index).nonzero()[:, 0]
        if rows.numel() == 0 or name == "clean":
            continue
        xr, er = x[rows], eps[rows]
        if name == "noise":
            u = torch.rand(xr.shape, generator=generator, device=dev, dtype=xr.dtype).to(x.device)
            out[rows] = (xr + (2 * u - 1) * er.view(-1, *([1] * (x.dim() - 1)))).clamp(lo, hi)
        else:
            steps = STEPS[name]
            attack = PGD(model, eps=er, alpha=er / steps, steps=steps, random_start=False, keep="last", lo=lo, hi=hi,
                         seed=seed)
            out[rows] = attack(xr, y[rows])
    return out.detach(), kind


def _ensemble(target: nn.Module, others: Sequence[nn.Module]) -> nn.Module:
    from ..models import LogitEnsemble
    if not all(isinstance(m, nn.Module) for m in others):
        raise TypeError("others must be nn.Modules")
    return LogitEnsemble([target, *others])
