"""TisODE training (Yan et al., ICLR 2020; the official mnist/main_tisode_gaus.py): cross-entropy
plus the steady-state loss of the model's ODE blocks, on Gaussian-noise-augmented inputs."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from ...nn.ode import ODEBlock
from .base import RECIPES, BatchOutput, Recipe, StepContext, create_recipe, register_recipe
from .losses import check_int, check_real


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
    """loss = L_inner(f, x~, y) + w * L_ss: x~ the Gaussian-noise-augmented batch, L_inner the
    loss of the `inner` recipe on it (default "standard": CE, the official TisODE training) and
    L_ss the steady-state loss of the model's ODE blocks (fastrobust.nn.ODEBlock with a
    steady_state window, as fastrobust.models.create("ode_net", ode="tisode") builds) from the
    last train-mode forward the inner recipe ran (PGD-AT: the adversarial batch's), added from
    epoch `ss_from_epoch` (0-based) on.

    Options (official defaults): weight=0.01, ss_from_epoch=5, noise_probability=0.5,
    noise_sigmas=(50/255, 75/255, 100/255); inner="standard" and inner_options={} (e.g.
    inner="pgd", inner_options={"steps": 7}: PGD-AT of a TisODE net; any recipe but tisode).
    eps goes to the inner recipe, as alpha and steps when given (the trainer's --alpha and
    --steps). With a model without ODE blocks L_ss is 0 and the recipe is the inner recipe on
    noise-augmented data (the CNN baseline's training). noise_probability=0 turns the
    augmentation off.
    BatchOutput: the inner recipe's (logits, adv_logits, extras) with the loss replaced;
    extras add loss_inner and steady_state.
    """

    name = "tisode"

    def __init__(self, eps: float = 8 / 255, weight: float = 0.01, ss_from_epoch: int = 5,
                 noise_probability: float = 0.5, noise_sigmas: Sequence[float] = (50 / 255, 75 / 255, 100 / 255),
                 inner: str = "standard", inner_options: Optional[Mapping[str, Any]] = None,
                 alpha: Optional[float] = None, steps: Optional[int] = None):
        self.eps = eps
        self.weight = check_real(weight, "weight")
        self.ss_from_epoch = check_int(ss_from_epoch, "ss_from_epoch", 0)
        self.noise_probability = check_real(noise_probability, "noise_probability", maximum=1.0)
        if isinstance(noise_sigmas, (str, bytes)) or not hasattr(noise_sigmas, "__len__") or len(noise_sigmas) == 0:
            raise ValueError(f"noise_sigmas must be a non-empty sequence of numbers >= 0, got {noise_sigmas!r}")
        self.noise_sigmas = tuple(check_real(s, "noise_sigmas") for s in noise_sigmas)
        if not isinstance(inner, str) or inner not in RECIPES or inner == self.name:
            choices = ", ".join(sorted(n for n in RECIPES if n != self.name))
            raise ValueError(f"inner must name another recipe ({choices}), got {inner!r}")
        if inner_options is not None and not isinstance(inner_options, Mapping):
            raise ValueError(f"inner_options must be a dict of the inner recipe's options, got {inner_options!r}")
        options = dict(inner_options or {})
        for key, value in (("alpha", alpha), ("steps", steps)):
            if value is not None:
                if key in options:
                    raise ValueError(f"{key} is given twice (as {key} and in inner_options); set it once")
                options[key] = value
        try:
            self.inner = create_recipe(inner, eps=eps, **options)
        except ValueError as exc:
            raise ValueError(f"inner_options: {exc}") from exc

    def prepare(self, model, num_classes: int):
        return self.inner.prepare(model, num_classes)

    def structure(self, model, num_classes: int):
        return self.inner.structure(model, num_classes)

    def epoch_start(self, epoch: int, epochs: int) -> None:
        self.inner.epoch_start(epoch, epochs)

    def depends_on_total_epochs(self) -> bool:
        # the steady-state term starts at a fixed epoch, not a fraction of the run: the inner
        # recipe decides
        return self.inner.depends_on_total_epochs()

    def state_dict(self) -> Dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def batch_loss(self, model, x, y, ctx: StepContext) -> BatchOutput:
        if self.noise_probability > 0:
            x = gaussian_noise(x, ctx.generator, self.noise_probability, self.noise_sigmas)
        for block in model.modules():  # no stale value from an earlier step's forward
            if isinstance(block, ODEBlock):
                block.steady_state_loss = None
        out = self.inner.batch_loss(model, x, y, ctx)
        ss = steady_state_loss(model, out.loss)
        loss = out.loss + self.weight * ss if ctx.epoch >= self.ss_from_epoch else out.loss
        extras = dict(out.extras, loss_inner=out.loss.detach(), steady_state=ss.detach())
        return BatchOutput(loss, out.logits, out.adv_logits, extras)

    def options(self) -> Dict[str, Any]:
        return dict(weight=self.weight, ss_from_epoch=self.ss_from_epoch, noise_probability=self.noise_probability,
                    noise_sigmas=list(self.noise_sigmas), inner=self.inner.name, inner_options=self.inner.options())
