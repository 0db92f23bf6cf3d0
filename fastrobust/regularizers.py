"""Gradient regularisers for training: the Jacobian-norm and selective input-gradient terms of
J-SIGR-style training (spec/methods-more.md §3; the official repository holds no training
code, so the combination is a reconstruction, "J-SIGR-style").

    jacobian_norm(logits, x)              ||dz/dx||_F^2 per sample, random-projection estimate
                                          (Hoffman, Roberts, Yaida 2019), unbiased
    input_gradient_penalty(loss, x, mask) ||(1 - M) * d loss / dx||^2 per sample (Ross and
                                          Doshi-Velez 2018, restricted to outside a mask M)
    top_gradient_mask(q)                  a mask provider: the top-q fraction of positions by
                                          |d loss / dx| (summed over channels), detached
    perturbation_saliency(model, x, y)    a preserve mask optimised as Fong and Vedaldi's
                                          meaningful perturbation (area and smoothness terms)

Both penalties are differentiable twice (they are built with create_graph=True), so a
training step backpropagates through them into the parameters: the double-backward costs
about one more backward per term.

BatchNorm in train mode couples the samples of a batch; the "per-sample" Jacobian then holds
the cross-sample terms too (as in the estimate's reference code): evaluate the term in eval
mode where that matters.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from ._checks.common import real_number, require_tensor

REDUCTIONS = ("mean", "sum", "none")
MaskProvider = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")


def _check_input(x, name: str = "x") -> torch.Tensor:
    require_tensor(x, name)
    if not x.requires_grad:
        raise ValueError(f"{name} must require grad (x.requires_grad_(True) before the forward), "
                         f"or the penalty has no gradient to take")
    if x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension, got a 0-d tensor")
    return x


def _input_grad(output: torch.Tensor, x: torch.Tensor, name: str, create_graph: bool) -> torch.Tensor:
    # retain_graph: the caller's graph (logits, loss) stays usable, e.g. for the CE term's backward
    (grad,) = torch.autograd.grad(output, x, create_graph=create_graph, retain_graph=True, allow_unused=True)
    if grad is None:
        raise ValueError(f"{name} does not depend on x: there is no input gradient to regularise")
    return grad


def jacobian_norm(logits: torch.Tensor, x: torch.Tensor, n_proj: int = 1, reduction: str = "mean",
                  generator: Optional[torch.Generator] = None, create_graph: bool = True) -> torch.Tensor:
    """||d logits_i / d x_i||_F^2 per sample i, estimated with n_proj random projections.

    For v uniform on the unit sphere of R^C (C = logits.shape[1]), E[v v^T] = I / C, so
    C * ||J^T v||^2 is an unbiased estimate of ||J||_F^2; each projection costs one
    vector-Jacobian product (one backward with create_graph). The estimate of n_proj
    projections is their mean (variance falls as 1 / n_proj).

    Args:
        logits: (B, C), computed from x.
        x: the input batch (B, ...), requires grad.
        n_proj: projections per sample (>= 1).
        reduction: "mean" (default) or "sum" over the batch, or "none" for the (B,) estimates.
        generator: draws the projections (on logits' device); None uses the global RNG.
        create_graph: True (default) keeps the graph, so the result can be backpropagated into
            the parameters; False for a value only.
    """
    require_tensor(logits, "logits")
    _check_input(x)
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    if logits.shape[0] != x.shape[0]:
        raise ValueError(f"logits and x must have the same batch size, got {logits.shape[0]} and {x.shape[0]}")
    if isinstance(n_proj, bool) or not isinstance(n_proj, int) or n_proj < 1:
        raise ValueError(f"n_proj must be an integer >= 1, got {n_proj!r}")
    _check_reduction(reduction)
    b, c = logits.shape
    total = logits.new_zeros(b, dtype=torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype)
    for _ in range(n_proj):
        v = torch.randn(b, c, device=logits.device, dtype=total.dtype, generator=generator)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        grad = _input_grad((logits.to(v.dtype) * v).sum(), x, "logits", create_graph=create_graph)
        total = total + grad.reshape(b, -1).to(total.dtype).pow(2).sum(dim=1)
    return _reduce(total * (c / n_proj), reduction)


def input_gradient_penalty(loss: torch.Tensor, x: torch.Tensor,
                           mask: Union[None, torch.Tensor, MaskProvider] = None, reduction: str = "mean",
                           create_graph: bool = True) -> torch.Tensor:
    """||(1 - M) * d loss / d x||^2 per sample: the input gradient outside a mask M.

    Args:
        loss: a scalar computed from x (e.g. the batch's summed or mean cross-entropy; the
            gradient is that of `loss` as given, so a mean over B scales it by 1 / B).
        x: the input batch (B, ...), requires grad.
        mask: None (M = 0: the whole input gradient, Ross and Doshi-Velez's penalty); a tensor
            with values in [0, 1] that broadcasts to x (1 = salient, not penalised); or a
            provider called as mask(x, grad) with both detached (top_gradient_mask(q), or the
            caller's), whose result is detached.
        reduction: "mean" (default) or "sum" over the batch, or "none" for the (B,) penalties.
        create_graph: True (default): differentiable into the parameters.
    """
    require_tensor(loss, "loss")
    _check_input(x)
    if loss.numel() != 1:
        raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}")
    _check_reduction(reduction)
    grad = _input_grad(loss.reshape(()), x, "loss", create_graph=create_graph)
    if mask is not None:
        if callable(mask) and not isinstance(mask, torch.Tensor):
            mask = mask(x.detach(), grad.detach())
            require_tensor(mask, "mask (the provider's result)")
            mask = mask.detach()
        require_tensor(mask, "mask")
        try:
            torch.broadcast_shapes(mask.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"mask must broadcast to x's shape {tuple(x.shape)}, got {tuple(mask.shape)}") from None
        if mask.device != x.device:
            raise ValueError(f"mask must be on x's device ({x.device}), got {mask.device}")
        grad = grad * (1 - mask.to(grad.dtype))
    return _reduce(grad.reshape(x.shape[0], -1).pow(2).sum(dim=1), reduction)


def _saliency_map(grad: torch.Tensor) -> torch.Tensor:
    """|grad| summed over the channel dimension for images (B, C, H, W) -> (B, 1, H, W);
    |grad| itself for other ranks."""
    grad = grad.abs()
    return grad.sum(dim=1, keepdim=True) if grad.dim() == 4 else grad


def top_gradient_mask(q: float = 0.2) -> MaskProvider:
    """A mask provider for input_gradient_penalty: 1 at the ceil(q * P) positions of each
    sample with the largest |gradient| (P positions: H * W for images, whose channels are
    summed first; every feature otherwise), 0 elsewhere; ties broken by position order."""
    q = real_number(q, "q")
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")

    def provider(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        saliency = _saliency_map(grad)
        flat = saliency.reshape(saliency.shape[0], -1)
        k = max(1, math.ceil(q * flat.shape[1]))
        top = flat.topk(k, dim=1).indices
        mask = torch.zeros_like(flat).scatter_(1, top, 1.0)
        return mask.reshape(saliency.shape)

    provider.q = q  # type: ignore[attr-defined]
    return provider


def _total_variation(m: torch.Tensor) -> torch.Tensor:
    return (m[..., 1:, :] - m[..., :-1, :]).abs().mean() + (m[..., :, 1:] - m[..., :, :-1]).abs().mean()


def perturbation_saliency(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                          steps: int = 20, lr: float = 1.0, area: float = 0.05, tv: float = 0.02,
                          size: int = 7, blur_kernel: int = 5) -> torch.Tensor:
    """A perturbation-based saliency mask (Fong and Vedaldi's meaningful perturbation, the
    "preserve" game): a (B, 1, size, size) mask m in [0, 1], upsampled to x's height and width,
    keeps x where it is 1 and blurs it elsewhere; `steps` Adam steps minimise
    -log p_y(x * m + blur(x) * (1 - m)) + area * mean(m) + tv * TV(m), from m = 1. Returns the
    upsampled mask (B, 1, H, W), detached. The model runs in its current mode (a tuple output's
    first element is the logits); its parameters get no gradient.

    lr: Adam's step on the mask's logits, which start at 4 (m = 0.98). At lr 1.0, 20 steps on
    the 8x8 digits give masks whose centred cosine similarity with 300 steps' is 0.92 and 10
    steps 0.81; at lr 0.1 the mask is still a flat ~0.9 after 20 steps (similarity 0.28).

    x: images (B, C, H, W); y: labels (B,).
    """
    require_tensor(x, "x")
    require_tensor(y, "y")
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    for value, name in ((steps, "steps"), (size, "size"), (blur_kernel, "blur_kernel")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if blur_kernel % 2 == 0:
        raise ValueError(f"blur_kernel must be odd, got {blur_kernel}")
    lr = real_number(lr, "lr", 0.0, inclusive=False)
    area = real_number(area, "area", 0.0)
    tv = real_number(tv, "tv", 0.0)
    x = x.detach()
    pad = blur_kernel // 2
    blurred = F.avg_pool2d(F.pad(x, (pad,) * 4, mode="replicate"), blur_kernel, stride=1)
    logit_m = torch.full((x.shape[0], 1, size, size), 4.0, device=x.device, dtype=torch.float32, requires_grad=True)
    optimiser = torch.optim.Adam([logit_m], lr=lr)
    params = [p for p in getattr(model, "parameters", lambda: [])() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                m = torch.sigmoid(logit_m)
                up = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False).to(x.dtype)
                logits = model(x * up + blurred * (1 - up))
                if isinstance(logits, (tuple, list)):  # models that return (logits, extras)
                    logits = logits[0]
                objective = (F.cross_entropy(logits.float(), y) + area * m.mean() + tv * _total_variation(m))
                optimiser.zero_grad(set_to_none=True)
                objective.backward()
                optimiser.step()
    finally:
        for p in params:
            p.requires_grad_(True)
    m = torch.sigmoid(logit_m.detach())
    return F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False).to(x.dtype)
