"""The eager MI-FGSM loop (Dong et al. 2018; the NIPS-2017 attack script's update), the oracle
of fastrobust.attacks.MIFGSM."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mifgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int, momentum: float = 1.0,
           lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """L-inf MI-FGSM on CE, untargeted, from x: g <- momentum * g + grad / mean|grad| per sample,
    x <- clip_[lo,hi](clip_[x-eps, x+eps](x + alpha * sign(g))); returns the last iterate."""
    x = x.detach()
    x_adv, g = x.clone(), torch.zeros_like(x)
    dims = tuple(range(1, x.dim()))
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        g = momentum * g + grad / grad.abs().mean(dim=dims, keepdim=True)
        x_adv = x_adv.detach() + alpha * g.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(lo, hi)
    return x_adv
