"""sparta(x, weight, bias): fused Sparta-style spatially gated ReLU.

    y = relu(x) * 2 * sigmoid(dwconv_k(x) + b)

The forward saves only its inputs (x and the parameters); the backward op recomputes the
gate, so the layer keeps about a quarter of the activation memory of the eager composition.
The fake (meta) kernels and the autograd formula are registered here, right after _C is
loaded, for the `fastrobust` ops and for their emulated twins in `fastrobust_emu`.
"""
import torch

from .._extension import HAS_EXT, warn_fallback
from ._registration import reference_grads, register_differentiable_op
from .._checks.sparta import check_sparta_args, check_sparta_backward_args
from ..reference.sparta import sparta as _reference_sparta


def sparta(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Sparta-style spatially gated ReLU.

    Args:
        x: (N, C, H, W) floating tensor; any layout (non-contiguous and channels_last
            inputs are read correctly; the output is contiguous NCHW).
        weight: (C, 1, k, k) depthwise gate kernel, odd k (1, 3, 5, 7 on CUDA).
        bias: (C,) gate bias.
    All three must share dtype and device. Differentiable in x, weight and bias.

    Non-finite values: a NaN or inf in x reaches only the outputs whose k x k window holds it
    (and dL/dx within twice that radius), with the values the eager composition gives; the
    weight and bias gradients of its channel sum over every pixel, so they turn non-finite too,
    other channels' do not. Padding is never multiplied (0 * NaN would be NaN). Weights and
    biases are expected finite.
    """
    if HAS_EXT:
        return torch.ops.fastrobust.sparta(x, weight, bias)
    warn_fallback("sparta")
    return _reference_sparta(x, weight, bias)


def _fake_sparta(x, weight, bias):
    check_sparta_args(x, weight, bias)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_sparta_backward(grad_y, x, weight, bias):
    check_sparta_backward_args(grad_y, x, weight, bias)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
        torch.empty_like(bias, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # x, weight, bias: no activation besides x is kept


def _backward(backward_op, ctx, grad_y):
    x, weight, bias = ctx.saved_tensors
    return backward_op(grad_y, x, weight, bias)


def _double_backward(ctx, grad_y):
    """With create_graph=True: the gradients through the reference composition, differentiable."""
    return reference_grads(_reference_sparta, ctx.saved_tensors, grad_y)


register_differentiable_op("sparta", _fake_sparta, _fake_sparta_backward, _setup_context, _backward,
                           _double_backward)
