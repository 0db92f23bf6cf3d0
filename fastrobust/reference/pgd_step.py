"""Reference of the PGD engine's fused ops, in plain PyTorch.

Written as eager element-wise chains, the way torchattacks / AutoAttack / robustness write
their inner loops; they define what the fused kernels compute:

- pgd_step_:        one step + projection onto the eps-ball around x0 + box clip, in place;
- pgd_random_init_: a random start inside the eps-ball, box-clipped, in place;
- pgd_update_best_: per-sample best point (highest loss, or first/last successful one);
- apgd_step_:       the momentum step of APGD (Croce & Hein 2020).

Rows are dim 0: every sample (and every restart, when restarts are folded into the batch)
is one row with its own eps, alpha and norms.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._checks.pgd import (BEST_MODES, NORMS, canonical_norm, check_random_init_args,  # noqa: F401
                           check_in_place, check_row_value_range, check_row_values, check_step_args,
                           check_update_best_args)

# Added to L2 norms before dividing by them (AutoAttack's constant).
L2_TINY = 1e-12


def _per_row(v, x: torch.Tensor, name: str = "eps") -> torch.Tensor:
    """eps/alpha (a number, or a tensor with one value or one per row) shaped to broadcast over
    x's rows, in the op maths type; values checked (finite, >= 0) as the fused ops check them."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if not isinstance(v, torch.Tensor):
        v = torch.full((1,), float(v), dtype=acc, device=x.device)
    v = v.to(device=x.device, dtype=acc).reshape(-1)
    check_row_value_range(v, name)
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def row_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-row (dim 0) L2 norm, shaped to broadcast over t."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:])).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def project(x_new, x0, eps, norm, lo, hi):
    """Projection onto the eps-ball around x0 (L-inf clamp or L2 rescale), then the box clip."""
    if norm == "linf":
        x_new = torch.minimum(torch.maximum(x_new, x0 - eps), x0 + eps)
    else:
        delta = x_new - x0
        dnorm = row_norm(delta)
        # delta * min(1, eps/||delta||), written so that ||delta|| = 0 and eps = 0 stay finite.
        scale = torch.where(dnorm > eps, eps / torch.where(dnorm > 0, dnorm, torch.ones_like(dnorm)), torch.ones_like(dnorm))
        x_new = x0 + delta * scale
    return x_new.clamp(lo, hi)


def step_direction(grad, norm):
    """sign(g) for L-inf; g / (||g|| + 1e-12) for L2 (per row)."""
    if norm == "linf":
        return grad.sign()
    return grad / (row_norm(grad) + L2_TINY)


def pgd_step_(x, x0, grad, eps, alpha, active=None, noise=None, norm="linf", lo=0.0, hi=1.0,
              descent=False):
    """x <- clip_[lo,hi]( P_eps,x0( x +- alpha * dir(grad) + noise ) ) on the active rows, in place.

    The maths runs in float32 (float64 for float64 x) and is stored in x's dtype.
    """
    norm = canonical_norm(norm)
    check_step_args(x, x0, grad, eps, alpha, active, noise, norm)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa, x0a, ga = x.to(acc), x0.to(acc), grad.to(acc)
    eps_r, alpha_r = _per_row(eps, x, "eps"), _per_row(alpha, x, "alpha")
    direction = step_direction(ga, norm)
    x_new = xa - alpha_r * direction if descent else xa + alpha_r * direction
    if noise is not None:
        x_new = x_new + noise.to(acc)
    x_new = project(x_new, x0a, eps_r, norm, lo, hi)
    if active is not None:
        x_new = torch.where(active.reshape(-1, *([1] * (x.dim() - 1))), x_new, xa)
    x.copy_(x_new)
    return x


def pgd_random_init_(x, x0, eps, norm="linf", lo=0.0, hi=1.0, generator=None):
    """x <- clip_[lo,hi](x0 + delta), delta uniform in the eps-ball, in place.

    L-inf: delta ~ U(-eps, eps) per element. L2: a uniform direction (normalised Gaussian)
    times eps * u^(1/d), u ~ U(0, 1): uniform in the ball's volume (for image-sized d the
    radius is eps to within a few per cent, as in robustness' and AutoAttack's L2 starts).
    The kernels draw from their own counter-based generator (Philox): same distribution,
    other numbers.
    """
    norm = canonical_norm(norm)
    check_random_init_args(x, x0, eps, norm)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    eps_r = _per_row(eps, x, "eps")
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, dtype=acc, device=x.device)
        delta = (2 * u - 1) * eps_r
    else:
        n = torch.randn(x.shape, generator=generator, dtype=acc, device=x.device)
        d = math.prod(x.shape[1:])
        r = torch.rand((x.shape[0],), generator=generator, dtype=acc, device=x.device) ** (1.0 / d)
        delta = n / (row_norm(n) + L2_TINY) * r.reshape(-1, *([1] * (x.dim() - 1))) * eps_r
    x.copy_((x0.to(acc) + delta).clamp(lo, hi))
    return x


def better_rows(loss, is_adv, best_loss, success, mode):
    """Rows whose new point replaces the kept one.

    loss:           the highest loss wins (strictly higher).
    first_success:  the first successful point is kept for good; until then, the highest loss.
    last_success:   every successful point replaces the kept one; until the first, the highest loss.
    A point whose loss is not finite (NaN, +-inf) is never taken.
    """
    usable = torch.isfinite(loss)
    higher = loss.to(best_loss.dtype) > best_loss
    if mode == "loss":
        return usable & higher
    if mode == "first_success":
        return usable & ~success & (is_adv | higher)
    if mode == "last_success":
        return usable & (is_adv | (~success & higher))
    raise ValueError(f"mode must be one of {BEST_MODES}, got {mode!r}")


def pgd_update_best_(best_x, best_loss, success, x, loss, is_adv, mode="loss", nonfinite=None):
    """Keeps each row's best point (see better_rows) in best_x/best_loss; success |= is_adv where
    the loss is finite; nonfinite (optional bool (N,)) |= the loss is not finite."""
    check_update_best_args(best_x, best_loss, success, x, loss, is_adv, mode, nonfinite)
    better = better_rows(loss, is_adv, best_loss, success, mode)
    usable = torch.isfinite(loss)
    rows = better.reshape(-1, *([1] * (x.dim() - 1)))
    best_x.copy_(torch.where(rows, x, best_x))
    best_loss.copy_(torch.where(better, loss.to(best_loss.dtype), best_loss))
    success.logical_or_(is_adv & usable)
    if nonfinite is not None:
        nonfinite.logical_or_(~usable)
    return best_x, best_loss, success


def apgd_step_(x, x_prev, x0, grad, eta, eps, momentum=0.75, norm="linf", lo=0.0, hi=1.0):
    """APGD's step, in place:  z = P(x + eta * dir(grad));  x_new = P(x + a(z - x) + (1 - a)(x - x_prev));
    then x_prev <- x and x <- x_new. momentum a = 1 gives the plain first step (x_new = z).

    Both projections are `project` (L-inf: clamp to the ball, then the box; L2: rescale delta
    to norm min(eps, ||delta||), then the box), as in AutoAttack's code.
    """
    norm = canonical_norm(norm)
    check_step_args(x, x0, grad, eps, eta, None, None, norm, alpha_name="eta")
    check_in_place(x_prev, "x_prev")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa, xpa, x0a, ga = x.to(acc), x_prev.to(acc), x0.to(acc), grad.to(acc)
    eta_r, eps_r = _per_row(eta, x, "eta"), _per_row(eps, x, "eps")
    z = project(xa + eta_r * step_direction(ga, norm), x0a, eps_r, norm, lo, hi)
    x_new = project(xa + momentum * (z - xa) + (1 - momentum) * (xa - xpa), x0a, eps_r, norm, lo, hi)
    x_prev.copy_(x)
    x.copy_(x_new)
    return x, x_prev
