"""The baselines of the PGD suite written here (the eager PGD loop itself is
fastrobust.reference.pgd.pgd):

- gradient_floor: `steps` x (model forward + input gradient) and nothing else, the time no
  PGD implementation can beat on the same model;
- torchattacks_linf_step / torchattacks_l2_step: the element-wise chain of one step of
  torchattacks.PGD / PGDL2, the baseline of the fused step op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dtypes import autocast_context

# torchattacks.PGDL2 adds this to the gradient norm before dividing by it.
TORCHATTACKS_L2_TINY = 1e-10


def input_gradient(model, x: torch.Tensor, y: torch.Tensor, autocast_dtype=None) -> torch.Tensor:
    """d mean-CE(model(x), y) / dx: one forward and one input-only backward."""
    x = x.detach().requires_grad_(True)
    with autocast_context(x.device, autocast_dtype):
        loss = F.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, [x])[0]


def torchattacks_linf_step(adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor,
                           eps: float, alpha: float) -> torch.Tensor:
    adv = adv.detach() + alpha * grad.sign()
    delta = torch.clamp(adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=0, max=1).detach()


def torchattacks_l2_step(adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor,
                         eps: float, alpha: float) -> torch.Tensor:
    rows = adv.shape[0]
    grad_norms = torch.norm(grad.reshape(rows, -1), p=2, dim=1) + TORCHATTACKS_L2_TINY
    grad = grad / grad_norms.view(rows, *([1] * (grad.dim() - 1)))
    adv = adv.detach() + alpha * grad
    delta = adv - x
    delta_norms = torch.norm(delta.reshape(rows, -1), p=2, dim=1)
    factor = torch.min(eps / delta_norms, torch.ones_like(delta_norms))
    delta = delta * factor.view(rows, *([1] * (delta.dim() - 1)))
    return torch.clamp(x + delta, min=0, max=1).detach()


def gradient_floor(model, x: torch.Tensor, y: torch.Tensor, steps: int, autocast_dtype=None) -> None:
    """`steps` forwards and input gradients of the model at x: what every PGD step must pay."""
    for _ in range(steps):
        input_gradient(model, x, y, autocast_dtype)
