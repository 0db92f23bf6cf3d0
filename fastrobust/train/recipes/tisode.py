"""TisODE training (Yan et al., ICLR 2020; the official mnist/main_tisode_gaus.py): cross-entropy
plus the steady-state loss of the model's ODE blocks, on Gaussian-noise-augmented inputs."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
import torch.nn.functional as F

from ...nn.ode import ODEBlock
from .base import BatchOutput, Recipe, StepContext, register_recipe
from .losses import check_int, check_real, float_logits, output_logits


def steady_state_loss(model: torch.nn.Module, like: torch.Tensor) -> torch.Tensor:
    """The sum of the steady-state losses the model's ODE blocks computed in their last forward
    (0 where none has a window: a model without TisODE blocks)."""
    losses = [m.steady_state_loss for m in model.modules() if isinstance(m, ODEBlock) and m.steady_state_loss is not None]
    return torch.stack(losses).sum() if losses else like.new_zeros((), dtype=torch.float32)


def gaussian_noise(x: torch.Tensor, generator: torch.Generator, probability: float, sigmas: Sequence[float],
                   lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """The official augmentation, per sample: with `probability`, x + N(0, s^2) with s drawn
    uniformly from `sigmas`, clipped to [lo, hi]; the other samples unchanged."""
    n = x.shape[0]
    shape = (n,) + (1,) * (x.dim() - 1)
    apply = torch.rand(n, generator=generator, device=generator.device) < probability
    choice = torch.randint(len(sigmas), (n,), generator=generator, device=generator.device)
    sigma = torch.tensor(list(sigmas), dtype=x.dtype, device=generator.device)[choice] * apply.to(x.dtype)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return (x + noise.to(x.device) * sigma.to(x.device).view(shape)).clamp(lo, hi)


@register_recipe
class TisODE(Recipe):
    """loss = CE(f(x~), y) + w * L_ss, x~ the Gaussian-noise-augmented batch and L_ss the
    steady-state loss of the model's ODE blocks (fastrobust.nn.ODEBlock with a steady_state
    window, as fastrobust.models.create("ode_net", ode="tisode") builds), added from epoch
    `ss_from_epoch` (0-based) on.

    Options (official defaults): weight=0.01, ss_from_epoch=5, noise_probability=0.5,
    noise_sigmas=(50/255, 75/255, 100/255). eps (given by the trainer to every recipe) is
    accepted and unused: the trainer evaluates PGD at it. With a model without ODE blocks L_ss
    is 0 and the recipe is noise-augmented standard training (the CNN baseline's).
    BatchOutput: logits = logits of the augmented batch; extras: loss_natural, steady_state.
    """

    name = "tisode"

    def __init__(self, eps: float = 8 / 255, weight: float = 0.01, ss_from_epoch: int = 5,
                 noise_probability: float = 0.5, noise_sigmas: Sequence[float] = (50 / 255, 75 / 255, 100 / 255)):
        self.eps = eps
        self.weight = check_real(weight, "weight")
        self.ss_from_epoch = check_int(ss_from_epoch, "ss_from_epoch", 0)
        self.noise_probability = check_real(noise_probability, "noise_probability", maximum=1.0)
        if isinstance(noise_sigmas, (str, bytes)) or not hasattr(noise_sigmas, "__len__") or len(noise_sigmas) == 0:
            raise ValueError(f"noise_sigmas must be a non-empty sequence of numbers >= 0, got {noise_sigmas!r}")
        self.noise_sigmas = tuple(check_real(s, "noise_sigmas") for s in noise_sigmas)

    def depends_on_total_epochs(self) -> bool:
        return False  # the steady-state term starts at a fixed epoch, not a fraction of the run

    def batch_loss(self, model, x, y, ctx: StepContext) -> BatchOutput:
        x = gaussian_noise(x, ctx.generator, self.noise_probability, self.noise_sigmas)
        logits = output_logits(model(x))
        natural = F.cross_entropy(float_logits(logits), y)
        ss = steady_state_loss(model, natural)
        loss = natural + self.weight * ss if ctx.epoch >= self.ss_from_epoch else natural
        return BatchOutput(loss, logits.detach(), None, {"loss_natural": natural.detach(), "steady_state": ss.detach()})

    def options(self) -> Dict[str, Any]:
        return dict(weight=self.weight, ss_from_epoch=self.ss_from_epoch, noise_probability=self.noise_probability,
                    noise_sigmas=list(self.noise_sigmas))
