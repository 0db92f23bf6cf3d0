"""median3x3(x): the per-channel 3x3 median filter of NLM feature denoising (Xie et al., CVPR
2019, the `median` variant) as one fused op, forward and backward.

The op `median3x3(Tensor x) -> (Tensor y, Tensor arg)` returns the filtered map and, per
output, the window position (uint8, row-major (dy + 1) * 3 + (dx + 1)) of the value it
selected; the backward op `_median3x3_backward(grad_y, arg)` sends each output's gradient to
that pixel, as a deterministic gather. The eager composition it replaces (pad, unfold to nine
values per pixel, median) materialises a (B, C, H, W, 9) tensor forward and scatters back
through it.

Rules, identical on every backend (fastrobust.reference.median is the oracle): reflect padding
(torch's 'reflect'; along a dimension of size 1 the neighbour stays the pixel itself, i.e.
replicate); the median is the 5th smallest of the nine (value, position) pairs, so ties go to
the lower window position; NaN propagates (the output is NaN, selected at the first NaN).
"""
from __future__ import annotations

import torch

from .._extension import warn_fallback
from ._registration import has_op, register_differentiable_op
from .._checks.median import check_median_args, check_median_backward_args
from ..reference.median import median3x3 as _reference_median3x3


def median3x3(x: torch.Tensor) -> torch.Tensor:
    """Per-channel 3x3 median filter, stride 1, same size.

    x: (B, C, H, W), float32/float64/float16/bfloat16, any layout. Returns a contiguous tensor
    of x's shape and dtype. Padding is reflect (index -1 reads 1, index H reads H - 2); along a
    dimension of size 1 the neighbour index stays 0 (replicate). Ties go to the lower window
    position (row-major), NaN propagates. Differentiable: the gradient of each output goes to
    the pixel it selected.

    Non-finite values: a NaN makes every output whose window holds it NaN (selected at the first
    NaN's position); +-inf are ordered values like any other.
    """
    if has_op("fastrobust", "median3x3"):
        return torch.ops.fastrobust.median3x3(x)[0]
    warn_fallback("median3x3")
    return _reference_median3x3(x)


def _fake_median3x3(x):
    check_median_args(x)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, dtype=torch.uint8, memory_format=torch.contiguous_format))


def _fake_median3x3_backward(grad_y, arg):
    check_median_backward_args(grad_y, arg)
    return torch.empty_like(grad_y, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    _, arg = output
    ctx.mark_non_differentiable(arg)
    ctx.save_for_backward(arg)


def _backward(backward_op, ctx, grad_y, grad_arg):
    (arg,) = ctx.saved_tensors
    return backward_op(grad_y, arg)


register_differentiable_op("median3x3", _fake_median3x3, _fake_median3x3_backward, _setup_context, _backward)
