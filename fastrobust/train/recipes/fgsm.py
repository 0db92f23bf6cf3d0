"""FGSM adversarial training (Wong, Rice, Kolter 2020, "Fast is better than free") with the
tricks of Li et al., "Bag of tricks for FGSM adversarial training" (arXiv 2209.02684) that a
recipe can apply: pixel masking and a first-conv weight regulariser (spec/algorithms.md §4e)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ...attacks.model_runner import ModelRunner, eval_mode
from .base import BatchOutput, Recipe, StepContext, register_recipe
from .losses import FirstConvProbe, check_bool, check_real, float_logits, output_logits, weight_norm

NORMS = ("l1", "l2")


def pixel_keep_mask(x: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A {0, 1} mask broadcastable to x that zeroes exactly round(ratio * P) of the P pixel
    positions of every sample, chosen uniformly at random from `generator`. For (B, C, H, W)
    inputs a pixel is a position (h, w) with all its channels (mask (B, 1, H, W)); for other
    shapes every element after the batch dimension is a pixel."""
    shape = (x.shape[0], 1, *x.shape[2:]) if x.dim() >= 3 else tuple(x.shape)
    positions = 1
    for size in shape[1:]:
        positions *= size
    k = int(round(ratio * positions))
    keep = torch.ones(x.shape[0], positions, dtype=x.dtype, device=x.device)
    if k > 0:
        scores = torch.rand(x.shape[0], positions, generator=generator, device=generator.device)
        keep.scatter_(1, scores.to(x.device).argsort(dim=1)[:, :k], 0.0)
    return keep.reshape(shape)


@register_recipe
class FGSMAT(Recipe):
    """FGSM-AT: one FGSM step from a random start, alpha = 1.25 eps (Wong et al.), then
    CE(f(x_adv), y) in train mode.

        delta0 = U(-eps, eps) (random_start; else 0), start = clip_[0,1](x + delta0)
        g      = grad_x CE(f(start * M), y)          M: the pixel mask (all ones without masking)
        x_adv  = clip_[0,1]( x + clip_[-eps,eps](start - x + alpha * sign(g)) )

    Pixel masking (mask_ratio = r, Li et al. trick (a), spec §4e): a fraction r of each input's
    pixels (positions (h, w), all channels) is set to 0 in the point where the FGSM gradient is
    taken; the step is then added to the unmasked start (the clean image when random_start=False,
    the paper's "even without randomness" setting: x_adv = clip(x + eps*sign(g)) since
    alpha >= eps). Exactly round(r * H * W) pixels per image, drawn afresh each batch from
    ctx.generator. extras["mask_ratio"] is the fraction actually masked (0 without masking).

    First-conv regulariser (first_conv_reg = lambda, trick (c)): loss = CE + lambda * ||W1||,
    W1 the weight of the first nn.Conv2d the input goes through (found with forward pre-hooks
    on the first batch), ||.|| = first_conv_norm: "l2" the Frobenius norm (not squared) or "l1"
    the sum of |w|. extras: loss_adv (the CE) and first_conv_norm (||W1||, without lambda), so
    loss == loss_adv + lambda * first_conv_norm.

    Not options of this recipe: trick (b), a larger first-conv stride and smooth activations
    (SiLU / GELU / Softplus), are architecture choices; set them on the model (its activation /
    stride options). A recipe cannot apply them honestly to every model (PreActResNet calls
    F.relu, not an nn.ReLU module), so fgsm does not accept them.

    The FGSM gradient is taken in eval mode (the attack engine's convention; Wong et al. take it
    in train mode), under ctx.autocast_dtype and in channels_last when ctx.channels_last.
    Options: eps=8/255, alpha=None (1.25 * eps), steps=None (FGSM is one step: only None or 1),
    random_start=True, mask_ratio=0.0 (in [0, 1)), first_conv_reg=0.0, first_conv_norm="l2".
    The tricks' values in the paper are UNCONFIRMED (no code released); sweep r in 0.2-0.6.
    """

    name = "fgsm"
    # Wong et al.'s CIFAR schedule (train_fgsm.py): 15 epochs, cyclic lr 0 -> 0.2 -> 0 (peak
    # half-way); TrainConfig fills these in where left at None (see train/config.py).
    train_defaults = {data: dict(epochs=15, lr=0.2, schedule="onecycle", onecycle_peak=0.5)
                      for data in ("cifar10", "cifar100")}

    def __init__(self, eps: float = 8 / 255, alpha: Optional[float] = None, steps: Optional[int] = None,
                 random_start: bool = True, mask_ratio: float = 0.0, first_conv_reg: float = 0.0,
                 first_conv_norm: str = "l2"):
        self.eps = check_real(eps, "eps")
        self.alpha = 1.25 * self.eps if alpha is None else check_real(alpha, "alpha")
        if steps is not None and (isinstance(steps, bool) or steps != 1):
            raise ValueError(f"steps: FGSM takes one step (steps=None or 1), got {steps!r}")
        self.random_start = check_bool(random_start, "random_start")
        self.mask_ratio = check_real(mask_ratio, "mask_ratio")
        if self.mask_ratio >= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio!r}")
        self.first_conv_reg = check_real(first_conv_reg, "first_conv_reg")
        if first_conv_norm not in NORMS:
            raise ValueError(f"first_conv_norm must be one of {NORMS}, got {first_conv_norm!r}")
        self.first_conv_norm = first_conv_norm
        self._first_conv = None  # (id(model), the first nn.Conv2d of that model)

    def prepare(self, model, num_classes):
        if self.first_conv_reg > 0 and not any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
            raise ValueError("first_conv_reg needs a model with an nn.Conv2d")
        return model

    def _gradient(self, model, point: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if ctx.channels_last and point.dim() == 4:
            point = point.contiguous(memory_format=torch.channels_last)
        runner = ModelRunner(model, ctx.autocast_dtype)
        probe_needed = self.first_conv_reg > 0 and (self._first_conv is None or self._first_conv[0] != id(model))
        with eval_mode(model):
            if not probe_needed:
                return runner.loss_and_grad(point, lambda out: F.cross_entropy(out.logits, y, reduction="none"))[2]
            with FirstConvProbe(model) as probe:
                grad = runner.loss_and_grad(point, lambda out: F.cross_entropy(out.logits, y, reduction="none"))[2]
        if probe.module is None:
            raise ValueError("first_conv_reg: no nn.Conv2d ran in the model's forward")
        self._first_conv = (id(model), probe.module)
        return grad

    def depends_on_total_epochs(self) -> bool:
        return False  # nothing here reads the run's total epochs: a finished run can be extended

    def batch_loss(self, model, x, y, ctx: StepContext) -> BatchOutput:
        x0 = x.detach()
        if self.random_start:
            noise = torch.rand(x0.shape, generator=ctx.generator, device=ctx.generator.device).to(x0)
            start = (x0 + (2.0 * noise - 1.0) * self.eps).clamp(0.0, 1.0)
        else:
            start = x0
        extras: Dict[str, Any] = {}
        if self.mask_ratio > 0:
            keep = pixel_keep_mask(x0, self.mask_ratio, ctx.generator)
            point = start * keep
            extras["mask_ratio"] = 1.0 - keep.mean()
        else:
            point = start
            extras["mask_ratio"] = 0.0
        grad = self._gradient(model, point, y, ctx)
        step = start + self.alpha * grad.sign()
        x_adv = torch.min(torch.max(step, x0 - self.eps), x0 + self.eps).clamp(0.0, 1.0).detach()
        adv_logits = output_logits(model(x_adv))
        ce = F.cross_entropy(float_logits(adv_logits), y)
        loss = ce
        extras["loss_adv"] = ce.detach()
        if self.first_conv_reg > 0:
            term = weight_norm(self._first_conv[1].weight, self.first_conv_norm)
            loss = ce + self.first_conv_reg * term
            extras["first_conv_norm"] = term.detach()
        return BatchOutput(loss, None, adv_logits.detach(), extras)

    def options(self) -> Dict[str, Any]:
        return dict(eps=self.eps, alpha=self.alpha, random_start=self.random_start, mask_ratio=self.mask_ratio,
                    first_conv_reg=self.first_conv_reg, first_conv_norm=self.first_conv_norm)
