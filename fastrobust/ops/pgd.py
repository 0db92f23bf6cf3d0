"""The PGD engine's fused in-place ops (see fastrobust.reference.pgd_step for their maths).

    pgd_step_        step + projection onto the eps-ball + box clip, per row, in place
    pgd_random_init_ random start inside the eps-ball + box clip, in place (Philox, seeded)
    pgd_update_best_ per-row best point: highest loss, or first/last successful point
    apgd_step_       APGD's momentum step with per-row step sizes

None of them synchronises with the host or changes a shape, so a whole attack step
(model forward and input gradient in PyTorch, then these ops) can be captured in a CUDA
graph. eps, alpha and eta are a Python number or a tensor with one value or one value per
row; pass tensors (made once, on x's device) inside captured or hot loops. Their values must
be finite and >= 0: the CPU kernels check tensors on the host, the CUDA kernels with a
device-side assert (no host sync).

Non-finite values: L-inf ops are elementwise (a NaN gradient element gives no step, sign(NaN) =
0 as torch.sign; a NaN in x or x0 stays in that element); L2 ops mix a row through its norms,
so a NaN in a row's gradient or delta reaches that row only. pgd_update_best_ never keeps a
point whose loss is not finite and never counts it as a success.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from .._checks.pgd import (BEST_MODES, canonical_norm, check_in_place, check_random_init_args, check_row_values,
                           check_step_args, check_update_best_args)
from .._checks.common import check_same_device, real_number
from .._extension import warn_fallback
from ._registration import has_op
from ..reference import pgd_step as _ref

Scalar = Union[float, torch.Tensor]


def _as_rows(v: Scalar, x: torch.Tensor, name: str) -> torch.Tensor:
    """eps / alpha / eta for the op: a number becomes a (1,) tensor on x's device in the op maths
    type; a tensor is passed as it is (the op checks its shape and values), moved to x's device
    only when it is a CPU tensor for x elsewhere."""
    check_row_values(v, name, x)
    if isinstance(v, torch.Tensor):
        return v if v.device == x.device else v.to(x.device)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((1,), float(v), dtype=acc, device=x.device)


def _box(lo, hi):
    """The input box as two floats (infinite bounds allowed; the ops check lo <= hi)."""
    return real_number(lo, "lo", finite=False), real_number(hi, "hi", finite=False)


def pgd_step_(x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, eps: Scalar, alpha: Scalar,
              active: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
              norm="linf", lo: float = 0.0, hi: float = 1.0, descent: bool = False) -> torch.Tensor:
    """One PGD step on every active row of x, in place; returns x.

    L-inf: `x <- clip_[lo,hi]( clip_[x0-eps, x0+eps]( x +- alpha*sign(grad) + noise ) )`.
    L2:    x <- x +- alpha*grad/(||grad||+1e-12) + noise, then delta*min(1, eps/||delta||),
           then the box clip; norms are per row (dim 0), computed inside the kernel.
    active: bool (N,) or None; inactive rows are not touched. noise: x-shaped or None (added
    before the projection; FAT's omega*N(0,1) term). descent=True steps against the gradient
    (hypocritical / targeted attacks).
    eps and alpha: finite and >= 0 (a tensor's values are checked by the op: on the host for CPU
    tensors, by an asynchronous device-side assert on CUDA, so no step waits for the device).
    x must not require grad: it is written in place.
    """
    norm = canonical_norm(norm)
    check_in_place(x, "x")
    eps_t, alpha_t = _as_rows(eps, x, "eps"), _as_rows(alpha, x, "alpha")
    if has_op("fastrobust", "pgd_step_"):
        torch.ops.fastrobust.pgd_step_(x, x0, grad, eps_t, alpha_t, active, noise, norm, *_box(lo, hi),
                                       bool(descent))
        return x
    warn_fallback("pgd_step_")
    return _ref.pgd_step_(x, x0, grad, eps_t, alpha_t, active, noise, norm, lo, hi, descent)


def pgd_random_init_(x: torch.Tensor, x0: torch.Tensor, eps: Scalar, norm="linf", lo: float = 0.0,
                     hi: float = 1.0, seed: Optional[int] = None, offset: int = 0) -> torch.Tensor:
    """`x <- clip_[lo,hi](x0 + delta)`, delta uniform in the eps-ball around x0, in place; returns x.

    L-inf: uniform per element. L2: uniform in the ball (normalised Gaussian direction,
    radius eps*u^(1/d)). Numbers come from a Philox4x32-10 stream keyed by `seed` (drawn from
    torch's default generator when None) at counter `offset`: the same seed gives the same
    start on the CPU and on the GPU.
    """
    norm = canonical_norm(norm)
    check_in_place(x, "x")
    eps_t = _as_rows(eps, x, "eps")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    if has_op("fastrobust", "pgd_random_init_"):
        torch.ops.fastrobust.pgd_random_init_(x, x0, eps_t, norm, *_box(lo, hi), int(seed), int(offset))
        return x
    warn_fallback("pgd_random_init_")
    gen = torch.Generator(device=x.device).manual_seed(int(seed) + int(offset))
    return _ref.pgd_random_init_(x, x0, eps_t, norm, lo, hi, generator=gen)


def pgd_update_best_(best_x: torch.Tensor, best_loss: torch.Tensor, success: torch.Tensor, x: torch.Tensor,
                     loss: torch.Tensor, is_adv: torch.Tensor, mode: str = "loss",
                     nonfinite: Optional[torch.Tensor] = None):
    """Keeps each row's best point, in place; returns (best_x, best_loss, success).

    mode "loss": the highest loss; "first_success": the first successful point, the highest
    loss until then; "last_success": the latest successful point, the highest loss until the
    first. best_loss is float32/float64 (N,), success and is_adv bool (N,).
    A point whose loss is not finite (NaN, +-inf) is never kept and never counts as a success;
    nonfinite (optional bool (N,)) is set for those rows.
    """
    if mode not in BEST_MODES:
        raise ValueError(f"mode must be one of {BEST_MODES}, got {mode!r}")
    check_in_place(best_x, "best_x")
    check_in_place(best_loss, "best_loss")
    if has_op("fastrobust", "pgd_update_best_"):
        torch.ops.fastrobust.pgd_update_best_(best_x, best_loss, success, x, loss, is_adv, mode, nonfinite)
        return best_x, best_loss, success
    warn_fallback("pgd_update_best_")
    return _ref.pgd_update_best_(best_x, best_loss, success, x, loss, is_adv, mode, nonfinite)


def apgd_step_(x: torch.Tensor, x_prev: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, eta: Scalar,
               eps: Scalar, momentum: float = 0.75, norm="linf", lo: float = 0.0, hi: float = 1.0):
    """APGD's momentum step, in place; returns (x, x_prev).

    z = P(x + eta*dir(grad)); x_new = P(x + a(z - x) + (1-a)(x - x_prev)); x_prev <- x; x <- x_new,
    with a = momentum (1.0 on APGD's first step) and per-row step sizes eta (finite, >= 0, as
    eps; checked as pgd_step_ checks them). x and x_prev must not require grad.
    """
    norm = canonical_norm(norm)
    check_in_place(x, "x")
    check_in_place(x_prev, "x_prev")
    eta_t, eps_t = _as_rows(eta, x, "eta"), _as_rows(eps, x, "eps")
    if has_op("fastrobust", "apgd_step_"):
        torch.ops.fastrobust.apgd_step_(x, x_prev, x0, grad, eta_t, eps_t, real_number(momentum, "momentum"), norm,
                                        *_box(lo, hi))
        return x, x_prev
    warn_fallback("apgd_step_")
    return _ref.apgd_step_(x, x_prev, x0, grad, eta_t, eps_t, momentum, norm, lo, hi)


def _register_fakes(namespace: str) -> None:
    # The fake kernels run for meta tensors, and for every call that mixes a meta tensor with
    # real ones: their device checks make the latter an error instead of a call that does nothing.
    def fake_step(x, x0, grad, eps, alpha, active, noise, norm, lo, hi, descent):
        check_step_args(x, x0, grad, eps, alpha, active, noise, norm)

    def fake_init(x, x0, eps, norm, lo, hi, seed, offset):
        check_random_init_args(x, x0, eps, norm)

    def fake_best(best_x, best_loss, success, x, loss, is_adv, keep, nonfinite=None):
        check_update_best_args(best_x, best_loss, success, x, loss, is_adv, keep, nonfinite)

    def fake_apgd(x, x_prev, x0, grad, eta, eps, momentum, norm, lo, hi):
        check_step_args(x, x0, grad, eps, eta, None, None, norm, alpha_name="eta")
        check_in_place(x_prev, "x_prev")
        check_same_device("x", x, x_prev=x_prev)
        torch._check(x_prev.shape == x.shape and x_prev.dtype == x.dtype,
                     lambda: f"x_prev must have the shape and dtype of x ({tuple(x.shape)}, {x.dtype}), got "
                             f"{tuple(x_prev.shape)}, {x_prev.dtype}")

    torch.library.register_fake(f"{namespace}::pgd_step_")(fake_step)
    torch.library.register_fake(f"{namespace}::pgd_random_init_")(fake_init)
    torch.library.register_fake(f"{namespace}::pgd_update_best_")(fake_best)
    torch.library.register_fake(f"{namespace}::apgd_step_")(fake_apgd)


for _namespace in ("fastrobust", "fastrobust_emu"):
    if has_op(_namespace, "pgd_step_"):
        _register_fakes(_namespace)
