"""Pieces shared by the recipes fat, trades, fgsm, iat, spat and thrm.

- option checks with clear errors (every recipe option is checked when the recipe is built);
- KL terms: per-row KL(p(clean) || p(other)) and its batch mean (TRADES, FAT-TRADES, THRM);
- mixup draws and the mixup cross-entropy (IAT);
- the cosine classifier head and SPAT's margin logits and self-paced robust term;
- the first convolution a model applies (FGSM-AT's first-conv regulariser);
- inner maximisations the attack classes do not offer as such: PGD (and FAT's early-stopped
  PGD) from x + sigma*N(0, 1) on a per-row objective of the recipe (the attacks' loss=callable
  hook), as the official TRADES / FAT-TRADES / SPAT code starts its KL attacks.

All losses are computed in float32 (float64 for float64 logits) from the logits.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...attacks import FATPGD, PGD
from ...attacks.fat import EarlyStop
from ...attacks.loop import KEEP_MODES, SignSteps
from ...attacks.model_runner import ModelRunner, eval_mode
from ...attacks.starts import gaussian_start

# --------------------------------------------------------------------------------------------
# option checks


def check_real(value, name: str, minimum: float = 0.0, strict: bool = False,
               maximum: Optional[float] = None) -> float:
    """A finite number >= minimum (> minimum with strict), <= maximum if given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return value


def check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def attack_kwargs(ctx) -> dict:
    """The attack arguments every recipe passes: a seed drawn from the step's generator, the
    trainer's autocast dtype and memory format."""
    return dict(seed=ctx.seed(), autocast=ctx.autocast_dtype, channels_last=ctx.channels_last)


def output_logits(output) -> torch.Tensor:
    """The logits of a model output (the first element of a tuple/list output)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output


def float_logits(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()


def eval_logits(model: nn.Module, x: torch.Tensor, autocast: Optional[torch.dtype]) -> torch.Tensor:
    """Logits of x in eval mode, without a graph (float32): the clean reference point of the KL
    attacks, which run in eval mode as the attack engine does."""
    with eval_mode(model):
        return ModelRunner(model, autocast).logits(x)


# --------------------------------------------------------------------------------------------
# KL terms


def kl_rows(clean_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """(B,): KL(p || q) = sum_j p_j (log p_j - log q_j) per row, p = softmax(clean_logits),
    q = softmax(other_logits); what nn.KLDivLoss(reduction="none")(log q, p).sum(1) computes,
    from log-softmaxes (no log of an underflowed probability)."""
    log_p = F.log_softmax(float_logits(clean_logits), dim=1)
    log_q = F.log_softmax(float_logits(other_logits), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def kl_batchmean(clean_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """KL(p(clean) || p(other)) averaged over the batch: nn.KLDivLoss(reduction="batchmean")
    (log_softmax(other), softmax(clean)), TRADES' (1/B) * KLDivLoss(size_average=False)."""
    return kl_rows(clean_logits, other_logits).mean()


def kl_objective(clean_logits: torch.Tensor) -> Callable:
    """The attacks' loss=callable for maximising KL(p(x) || p(x_adv)) row by row; p(x) comes
    from `clean_logits` (fixed, computed once). The attack keeps the rows in the batch's order
    (one restart, one pass), which the shape check guards."""
    return rowwise_objective("KL", clean_logits, kl_rows)


def rowwise_objective(name: str, clean_logits: torch.Tensor,
                      rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    """The attacks' loss=callable rows(p(x) logits, attack logits) with p(x) fixed; the attack
    must keep the rows in the batch's order, which the shape check guards."""
    clean_logits = clean_logits.detach()

    def objective(output, y, targets):
        logits = output_logits(output)
        if logits.shape != clean_logits.shape:
            raise ValueError(f"{name} objective: attack rows {tuple(logits.shape)} do not match the batch "
                             f"{tuple(clean_logits.shape)}")
        return rows(clean_logits, logits)

    return objective


# --------------------------------------------------------------------------------------------
# mixup (IAT)


def draw_mixup(generator: torch.Generator, n: int, alpha: float,
               seed: Optional[int] = None) -> Tuple[float, torch.Tensor]:
    """One mixup draw: (lambda ~ Beta(alpha, alpha), a random permutation of range(n) from
    `generator`). Lambda comes from numpy (torch's Beta sampler takes no generator) seeded with
    `seed`, or with a number drawn from `generator` when seed is None. alpha = 0 gives
    lambda = 1 (no mixing), as the mixup reference code."""
    if seed is None:
        seed = int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha)) if alpha > 0 else 1.0
    perm = torch.randperm(n, generator=generator, device=generator.device)
    return lam, perm


def mix(x: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """lambda * x_i + (1 - lambda) * x_perm(i)."""
    return lam * x + (1.0 - lam) * x[perm]


def mixup_cross_entropy(logits: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """lambda * CE(logits, y) + (1 - lambda) * CE(logits, y[perm]) (batch means)."""
    logits = float_logits(logits)
    return lam * F.cross_entropy(logits, y) + (1.0 - lam) * F.cross_entropy(logits, y[perm])


# --------------------------------------------------------------------------------------------
# cosine classifier head and SPAT's terms


class CosineHead(nn.Module):
    """Cosine classifier: logits = scale * cos(f, w_k) = scale * <f/||f||, w_k/||w_k||>.

    weight: (num_classes, in_features), no bias (a cosine has none). The output is the cosine
    times `scale`, so the model's logits are the ones the SPAT loss puts into its softmaxes
    (s * z) and evaluation (argmax, CE attacks) sees the trained softmax; cosine() returns z.
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 8.0,
                 weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.in_features = check_int(in_features, "in_features", 1)
        self.out_features = check_int(out_features, "out_features", 1)
        self.scale = check_real(scale, "scale", 0.0, strict=True)
        if weight is None:
            weight = torch.empty(out_features, in_features)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if weight.shape != (out_features, in_features):
            raise ValueError(f"weight must have shape ({out_features}, {in_features}), got {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight.detach().clone())

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"


def install_cosine_head(model: nn.Module, num_classes: int, scale: float) -> CosineHead:
    """Replaces the model's last nn.Linear (in module order) by a CosineHead with the same
    in_features, initialised with the Linear's weight (its bias is dropped); returns the head.
    A model that already has a CosineHead of this scale keeps it (prepare called twice)."""
    heads = [m for m in model.modules() if isinstance(m, CosineHead)]
    if heads:
        head = heads[-1]
        if head.scale != scale or head.out_features != num_classes:
            raise ValueError(f"model already has {head!r}; SPAT needs scale={scale}, {num_classes} classes")
        return head
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("SPAT's cosine head replaces the model's last nn.Linear; the model has none")
    name, linear = linears[-1]
    if linear.out_features != num_classes:
        raise ValueError(f"the model's last nn.Linear ({name}) has {linear.out_features} outputs, "
                         f"expected num_classes={num_classes}")
    head = CosineHead(linear.in_features, linear.out_features, scale, weight=linear.weight.data)
    head.to(device=linear.weight.device, dtype=linear.weight.dtype)
    parent = model
    *path, leaf = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, leaf, head)
    return head


def spat_margin_logits(cos: torch.Tensor, y: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """SPAT's natural-term logits s * z~: z~_y = (1 + m - z_y) z_y, z~_j = (z_j + m) z_j (j != y),
    from cosines z; the factors are not detached (official sp_logits)."""
    cos = float_logits(cos)
    onehot = F.one_hot(y, cos.shape[1]).to(cos.dtype)
    weight = (1.0 + m - cos) * onehot + (cos + m) * (1.0 - onehot)
    return s * weight * cos


def spat_robust_rows(clean_logits: torch.Tensor, adv_logits: torch.Tensor, n: float) -> torch.Tensor:
    """(B,): sum_j k_j (k_j + n), k_j = p_j (log p_j - log q_j), p = softmax(clean_logits),
    q = softmax(adv_logits) (the logits being s * z); SPAT's robust term of each row."""
    log_p = F.log_softmax(float_logits(clean_logits), dim=1)
    log_q = F.log_softmax(float_logits(adv_logits), dim=1)
    k = log_p.exp() * (log_p - log_q)
    return (k * (k + n)).sum(dim=1)


def spat_objective(clean_logits: torch.Tensor, n: float) -> Callable:
    """The attacks' loss=callable maximising SPAT's robust term row by row (p(x) fixed)."""
    return rowwise_objective("SPAT", clean_logits, lambda clean, adv: spat_robust_rows(clean, adv, n))


# --------------------------------------------------------------------------------------------
# the first convolution (FGSM-AT's regulariser)


class FirstConvProbe:
    """Context manager recording the first nn.Conv2d that runs a forward while it is open
    (forward pre-hooks on every Conv2d of the model, removed on exit)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.module: Optional[nn.Conv2d] = None
        self._handles: List = []

    def _hook(self, module, inputs):
        if self.module is None:
            self.module = module

    def __enter__(self) -> "FirstConvProbe":
        self._handles = [m.register_forward_pre_hook(self._hook) for m in self.model.modules()
                         if isinstance(m, nn.Conv2d)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def weight_norm(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """||W||_1 (sum of |w|) or ||W||_2 (Frobenius norm, not squared), in float32."""
    w = weight.float() if weight.dtype != torch.float64 else weight
    return w.abs().sum() if kind == "l1" else w.pow(2).sum().sqrt()


# --------------------------------------------------------------------------------------------
# inner maximisations from a small Gaussian start


class GaussianStartPGD(PGD):
    """PGD (sign steps, projection, box) from x + sigma*N(0, 1) (projected onto the eps-ball
    and the box) instead of a uniform or clean start; everything else is PGD's, e.g.
    loss=callable and keep. The TRADES / SPAT inner maximisation: a KL-type objective has zero
    gradient at x itself, hence the small random start (official: sigma = 0.001)."""

    def __init__(self, model: nn.Module, sigma: float = 0.001, **kwargs):
        if "random_start" in kwargs:
            raise ValueError("GaussianStartPGD always starts at x + sigma*N(0, 1)")
        super().__init__(model, random_start=False, **kwargs)
        self.sigma = check_real(sigma, "sigma")

    def _run_rows(self, ctx, rows, evaluate):
        x = gaussian_start(rows, self.sigma, self.norm, self.lo, self.hi)
        loop = SignSteps(self.steps, self.norm, self.lo, self.hi, loss_at=lambda t: self.loss,
                         keep=KEEP_MODES[self.keep])
        return loop.run(ctx, rows, x, evaluate=evaluate)


class GaussianStartFATPGD(FATPGD):
    """FAT's early-stopped PGD (FATPGD's freeze rule, noise omega*N(0, 1)) on a per-row
    objective `loss` (callable(output, y, targets), maximised) from x + sigma*N(0, 1): the inner
    maximisation of FAT-TRADES (official earlystop(..., loss_fn="kl",
    randominit_type="normal_distribution_randominit"))."""

    def __init__(self, model: nn.Module, loss: Callable, sigma: float = 0.001, **kwargs):
        if "random_start" in kwargs:
            raise ValueError("GaussianStartFATPGD always starts at x + sigma*N(0, 1)")
        super().__init__(model, random_start=False, **kwargs)
        if not callable(loss):
            raise ValueError("loss must be a callable loss(output, y, targets) -> (N,)")
        self.loss = loss
        self.sigma = check_real(sigma, "sigma")

    def _run_rows(self, ctx, rows, evaluate):
        x = gaussian_start(rows, self.sigma, self.norm, self.lo, self.hi)
        loop = SignSteps(self.steps, self.norm, self.lo, self.hi, loss_at=lambda t: self.loss)
        return loop.run(ctx, rows, x, control=EarlyStop(rows, self.tau, self.omega), evaluate=evaluate)


def milestones_tuple(value: Sequence[int], name: str) -> Tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a sequence of epochs, got {value!r}")
    out = tuple(check_int(v, f"{name}[{i}]", 0) for i, v in enumerate(value))
    if list(out) != sorted(out):
        raise ValueError(f"{name} must be non-decreasing, got {out}")
    return out
