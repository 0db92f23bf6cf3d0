"""Checks of the PGD engine's in-place ops: pgd_step_, pgd_random_init_, pgd_update_best_,
apgd_step_."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch

from .common import check_same_device, require_tensor

NORMS = ("linf", "l2")
BEST_MODES = ("loss", "first_success", "last_success")


def canonical_norm(norm) -> str:
    """'linf' or 'l2' from any of the spellings users write (inf, 'Linf', 2, 'L2', ...)."""
    if isinstance(norm, str):
        key = norm.strip().lower()
        if key in ("linf", "inf", "l_inf"):
            return "linf"
        if key in ("l2", "2"):
            return "l2"
    elif isinstance(norm, (int, float)) and not isinstance(norm, bool):
        if norm == float("inf"):
            return "linf"
        if norm == 2:
            return "l2"
    raise ValueError(f"norm must be 'linf' (or inf) or 'l2' (or 2), got {norm!r}")


ATTACK_NORMS = ("linf", "l2", "l1")


def canonical_attack_norm(norm, supported=NORMS) -> str:
    """An attack's threat model: 'linf', 'l2' or 'l1' from any of their spellings, checked
    against the norms the attack supports."""
    key = norm.strip().lower() if isinstance(norm, str) else norm
    if key in ("l1", "1") or (isinstance(key, (int, float)) and not isinstance(key, bool) and key == 1):
        canonical = "l1"
    else:
        try:
            canonical = canonical_norm(norm)
        except ValueError:
            canonical = None
    if canonical not in supported:
        spelled = {"linf": "'linf' (or inf)", "l2": "'l2' (or 2)", "l1": "'l1' (or 1)"}
        raise ValueError(f"norm must be {' or '.join(spelled[n] for n in supported)} for this attack, got {norm!r}")
    return canonical


def check_row_values(v: Union[float, torch.Tensor], name: str, x: torch.Tensor) -> None:
    """eps / alpha / eta: a number, or a floating tensor of shape (), (1,) or (rows,) on x's
    device (a CPU tensor is also accepted for x elsewhere, as PyTorch accepts CPU scalars).
    Values finite and >= 0: numbers are checked here, tensors by the ops (on the host for CPU
    tensors, in the kernel on CUDA) and by the references."""
    if not isinstance(v, torch.Tensor):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"{name} must be a number or a floating-point tensor, got {type(v).__name__} {v!r}")
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
        return
    if not v.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {v.dtype}")
    if v.device != x.device and (v.device.type == "meta" or x.device.type == "meta" or v.device.type != "cpu"):
        raise ValueError(f"{name} must be on the device of x ({x.device}), got {v.device}")
    if v.dim() > 1 or v.numel() not in (1, x.shape[0]):
        raise ValueError(f"{name} must hold one value or one per row ({x.shape[0]}), got shape {tuple(v.shape)}")


def check_in_place(t: torch.Tensor, name: str) -> None:
    """A tensor the op writes must not be part of an autograd graph."""
    if t.requires_grad:
        raise ValueError(f"{name} is updated in place and must not require grad (pass a detached tensor, "
                         f"e.g. {name}.detach())")


def check_step_args(x, x0, grad, eps, alpha, active=None, noise=None, norm="linf", alpha_name="alpha"):
    """The checks every pgd_step_ / apgd_step_ backend runs (same messages as the C++ ops)."""
    require_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension (rows are dim 0)")
    if not x.is_floating_point():
        raise ValueError(f"x must have a floating-point dtype, got {x.dtype}")
    check_in_place(x, "x")
    for name, t in (("x0", x0), ("grad", grad), ("noise", noise)):
        if t is None:
            continue
        require_tensor(t, name)
        if t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise ValueError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    check_same_device("x", x, x0=x0, grad=grad, noise=noise, active=active)
    check_row_values(eps, "eps", x)
    check_row_values(alpha, alpha_name, x)
    if active is not None:
        if active.dtype != torch.bool or active.shape != (x.shape[0],):
            raise ValueError(
                f"active must be a bool tensor of shape ({x.shape[0]},), got {active.dtype} {tuple(active.shape)}"
            )
    canonical_norm(norm)


def check_random_init_args(x, x0, eps, norm="linf"):
    require_tensor(x, "x")
    require_tensor(x0, "x0")
    if x.dim() < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor with a batch dimension, got {x.dtype} "
                         f"{tuple(x.shape)}")
    check_in_place(x, "x")
    if x0.shape != x.shape or x0.dtype != x.dtype:
        raise ValueError(f"x0 must have the shape and dtype of x ({tuple(x.shape)}, {x.dtype}), got "
                         f"{tuple(x0.shape)}, {x0.dtype}")
    check_same_device("x", x, x0=x0)
    check_row_values(eps, "eps", x)
    canonical_norm(norm)


def check_update_best_args(best_x, best_loss, success, x, loss, is_adv, mode,
                           nonfinite: Optional[torch.Tensor] = None):
    if mode not in BEST_MODES:
        raise ValueError(f"mode must be one of {BEST_MODES}, got {mode!r}")
    for name, t in (("best_x", best_x), ("best_loss", best_loss), ("success", success), ("x", x),
                    ("loss", loss), ("is_adv", is_adv)):
        require_tensor(t, name)
    check_in_place(best_x, "best_x")
    check_in_place(best_loss, "best_loss")
    check_same_device("best_x", best_x, best_loss=best_loss, success=success, x=x, loss=loss, is_adv=is_adv,
                      nonfinite=nonfinite)
    rows = best_x.shape[0] if best_x.dim() > 0 else 0
    torch._check(x.shape == best_x.shape, lambda: f"x must have the shape of best_x {tuple(best_x.shape)}, got "
                                                  f"{tuple(x.shape)}")
    for name, t in (("best_loss", best_loss), ("success", success), ("loss", loss), ("is_adv", is_adv),
                    ("nonfinite", nonfinite)):
        if t is not None:
            torch._check(t.shape == (rows,), lambda name=name, t=t: f"{name} must have shape ({rows},), got "
                                                                    f"{tuple(t.shape)}")
    for name, t in (("success", success), ("is_adv", is_adv), ("nonfinite", nonfinite)):
        if t is not None:
            torch._check(t.dtype == torch.bool, lambda name=name, t=t: f"{name} must be a bool tensor, got {t.dtype}")


def check_row_value_range(v: torch.Tensor, name: str) -> None:
    """The values of an eps / alpha / eta tensor are finite and >= 0: read on the CPU, an
    asynchronous device-side assert elsewhere (what the fused ops do in C++)."""
    if v.numel() == 0 or v.device.type == "meta":
        return
    ok = ((v >= 0) & torch.isfinite(v)).all()
    if v.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok):
            bad = v.reshape(-1)[~((v >= 0) & torch.isfinite(v)).reshape(-1)][0].item()
            raise ValueError(f"{name} must be finite and >= 0, got {bad}")
        return
    torch._assert_async(ok, f"{name} must be finite and >= 0")
