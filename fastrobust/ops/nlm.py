"""Non-local-means feature denoising (Xie et al., CVPR 2019) as fused ops.

    nlm_gaussian(theta, phi, g, scale)   y_i = sum_j softmax_j(scale * theta_i . phi_j) g_j
    nlm_dot(theta, phi, g)               y_i = (1/N) sum_j (theta_i . phi_j) g_j

over all N = H * W positions of a feature map; theta and phi of width d, g of width C
(d != C allowed: the embedded layer uses d = C/2 and g = x).

nlm_gaussian is the op `fastrobust::nlm_gaussian`. It returns y and the per-row log-sum-exp
(B, N) of the logits, from which the backward op `_nlm_gaussian_backward` recomputes the
softmax. The CPU kernel works in blocks of queries, the softmax recomputed block by block
(the FlashAttention-2 scheme), extra memory O(B * N) plus an 8 MiB tile: the N x N affinity
is held whole only where it is no larger than the output (N <= C) and fits that tile, where
splitting it into blocks costs more than it saves. Its bfloat16 GEMMs read subnormal inputs as
0, so bfloat16 logits whose theta or phi holds an infinity are computed in float32 (an inf times
a subnormal stays +-inf, not NaN). On CUDA GPUs of compute capability 8.0 or newer, float16 and
bfloat16 inputs (and float32 where torch allows tf32) run on tensor cores with float32
accumulation, FlashAttention-2's way: no (query, key) plane, the forward in one pass over the
keys, each gradient accumulated over the other axis with its logits formed again (dg and dphi
in one kernel where C <= 512 and d <= 256); the probabilities, and ds in the backward, are
rounded to the input type (tf32 for float32) before their second product, as FlashAttention
does. float32 otherwise runs in float32 FMA, each logit (and each dp = dy . g) computed once
into (query, key) planes in global memory for forwards over more than 64 channels and for the
backward, the batch in even chunks within 1 GiB of planes.

nlm_gaussian(..., backend="auto") runs, on a CUDA GPU, whichever of the kernel,
F.scaled_dot_product_attention and the materialising composition (logits, softmax, product) is
expected fastest by the efficiencies measured on an H200, where the kernel was the slowest of
the three at every benchmark shape (fastrobust.ops.nlm_dispatch); on the CPU, the kernel.

nlm_dot is linear in each input, so it needs no kernel: it is two batched GEMMs in the cheaper
order, theta (phi^T g) / N when that costs fewer flops than forming the N x N affinity.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._extension import warn_fallback
from ._registration import has_op, reference_grads, register_differentiable_op
from .._checks.common import check_same_device
from .._checks.nlm import check_nlm_args, default_scale
from ..reference.nlm import flatten, positions
from ..reference.nlm import nlm_dot as _reference_dot
from ..reference.nlm import nlm_gaussian as _reference_gaussian
from ..reference.nlm import nlm_gaussian_sdpa as _reference_sdpa
from . import nlm_dispatch


def _autocast_inputs(*tensors: torch.Tensor):
    """Under autocast, the op runs in the autocast dtype like a matmul (the three inputs may
    arrive in different dtypes: conv outputs in bf16, the value x in float32)."""
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return tensors  # check_nlm_args names the culprit
    device_type = tensors[0].device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return tuple(t.to(dtype) if t.dtype.is_floating_point else t for t in tensors)
    return tensors


def nlm_gaussian(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor, scale: Optional[float] = None,
                 backend: str = "auto") -> torch.Tensor:
    """Softmax non-local means; the CPU kernel holds the N x N affinity whole only where it is
    no larger than the output (N <= C) and within 8 MiB.

    Args:
        theta: queries (B, d, H, W) or (B, d, N).
        phi: keys, theta's shape.
        g: values (B, C, H, W) or (B, C, N), same positions as theta.
        scale: multiplies the logits theta_i . phi_j; default 1/sqrt(d).
        backend: "auto" (default): on a CUDA GPU the path expected fastest among our kernel,
            F.scaled_dot_product_attention on the widths zero-padded to a common one (float16,
            bfloat16) and the materialising composition (while the B x N x N logits fit; the
            efficiencies measured on an H200, fastrobust.ops.nlm_dispatch); our kernel on the
            CPU. "kernel", "sdpa" or "materialize" force one. nlm_gaussian_path tells which
            runs.
    All three share dtype (float32/float16/bfloat16; float64 on CPU) and device; any layout.
    Returns y with g's shape (contiguous), differentiable in all three inputs.

    Precision on CUDA: float16/bfloat16 products run on tensor cores (sm_80+) with float
    accumulators; float32 stays float32 unless torch allows tf32 in CUDA matrix products
    (torch.backends.cuda.matmul.fp32_precision = "tf32", or allow_tf32 = True, or
    torch.set_float32_matmul_precision("high"), read at each call, as for torch.matmul): then
    its products run on tensor cores as tf32 (10-bit mantissas, float accumulators).

    Non-finite values: a NaN in g[b, c, j] reaches y[b, c, :]; in theta[b, :, i], y[b, :, i]; in
    phi[b, :, j], all of y[b] (every query attends to every key); never another sample. An
    infinite logit makes its row NaN, as torch.softmax does. scale must be finite (0 allowed:
    y is then the mean of g over the positions).
    """
    theta, phi, g = _autocast_inputs(theta, phi, g)
    if not torch.compiler.is_compiling():  # traced, the fake kernel checks (dynamo cannot trace the messages)
        check_nlm_args(theta, phi, g)
    scale = default_scale(theta, scale)
    path = nlm_dispatch.choose(theta, phi, g, backend)
    if path == "sdpa":
        return _reference_sdpa(theta, phi, g, scale)
    if path == "materialize":
        return _reference_gaussian(theta, phi, g, scale)
    if has_op("fastrobust", "nlm_gaussian"):
        return torch.ops.fastrobust.nlm_gaussian(theta, phi, g, scale)[0]
    warn_fallback("nlm_gaussian")
    return _reference_gaussian(theta, phi, g, scale)


def nlm_gaussian_path(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor, backend: str = "auto") -> str:
    """What nlm_gaussian(theta, phi, g, backend=backend) runs now: "sdpa", "materialize",
    "kernel" (our compiled kernel) or "reference" (the materialising fallback where the
    extension is not built)."""
    theta, phi, g = _autocast_inputs(theta, phi, g)
    check_nlm_args(theta, phi, g)
    return nlm_dispatch.built_path(nlm_dispatch.choose(theta, phi, g, backend))


def nlm_dot_flops(d: int, c: int, n: int):
    """Multiply-adds of the two orders: (phi^T g first, affinity first)."""
    return 2 * c * d * n, n * n * (d + c)


def nlm_dot(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Dot-product non-local means, y = theta (phi^T g) / N in the cheaper order.

    Shapes and dtypes as nlm_gaussian; differentiable (autograd through two batched GEMMs).
    """
    theta, phi, g = _autocast_inputs(theta, phi, g)
    if not torch.compiler.is_compiling():  # dynamo cannot trace the messages; traced, the GEMMs check shapes
        check_nlm_args(theta, phi, g)
    q, k, v = flatten(theta, phi, g)
    d, n, c = q.shape[1], q.shape[2], v.shape[1]
    gram_first, affinity_first = nlm_dot_flops(d, c, n)
    if gram_first >= affinity_first:
        return _reference_dot(theta, phi, g)
    # (C, d) = g phi^T / N per sample, then y = that @ theta: never an N x N matrix.
    gram = torch.bmm(v, k.transpose(1, 2)) / max(n, 1)
    return torch.bmm(gram, q).reshape(g.shape)


def _fake_nlm_gaussian(theta, phi, g, scale):
    check_nlm_args(theta, phi, g)
    default_scale(theta, scale)
    acc = torch.float64 if theta.dtype == torch.float64 else torch.float32
    lse = theta.new_empty((theta.shape[0], positions(theta)), dtype=acc)
    return torch.empty_like(g, memory_format=torch.contiguous_format), lse


def _fake_nlm_gaussian_backward(grad_y, theta, phi, g, y, lse, scale):
    check_nlm_args(theta, phi, g)
    check_same_device("g", g, grad_y=grad_y, y=y, lse=lse)
    torch._check(grad_y.shape == g.shape, lambda: f"grad_y must have the shape of g {tuple(g.shape)}, got {tuple(grad_y.shape)}")
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (theta, phi, g))


def _setup_context(ctx, inputs, output):
    theta, phi, g, scale = inputs
    y, lse = output
    ctx.scale = scale
    ctx.save_for_backward(theta, phi, g, y, lse)
    ctx.mark_non_differentiable(lse)


def _backward(backward_op, ctx, grad_y, _grad_lse):
    theta, phi, g, y, lse = ctx.saved_tensors
    return (*backward_op(grad_y, theta, phi, g, y, lse, ctx.scale), None)


def _double_backward(ctx, grad_y, _grad_lse):
    """With create_graph=True: the gradients through the materialising reference, differentiable."""
    theta, phi, g, _, _ = ctx.saved_tensors
    grads = reference_grads(lambda t, p, v: _reference_gaussian(t, p, v, ctx.scale), (theta, phi, g), grad_y)
    return (*grads, None)


register_differentiable_op("nlm_gaussian", _fake_nlm_gaussian, _fake_nlm_gaussian_backward, _setup_context, _backward,
                           _double_backward)
