"""Registers an op's fake kernels and autograd formula in every namespace the extension
defines it in: `fastrobust` (CPU/CUDA kernels) and `fastrobust_emu` (the CUDA device code
run by the emulator), so that both go through torch.compile, opcheck and autograd alike."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .._extension import HAS_EMU, HAS_EXT


def has_op(namespace: str, op: str) -> bool:
    enabled = HAS_EXT if namespace == "fastrobust" else HAS_EMU
    return enabled and hasattr(getattr(torch.ops, namespace), op)


def reference_grads(reference: Callable, inputs: Sequence, grad_output: torch.Tensor) -> tuple:
    """The gradients of reference(*inputs) (a differentiable composition) with respect to the
    inputs that require grad, built with create_graph=True: a backward whose result can itself
    be differentiated. None for the other inputs."""
    wanted = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    result = [None] * len(inputs)
    if not wanted:
        return tuple(result)
    with torch.enable_grad():
        out = reference(*inputs)
    grads = torch.autograd.grad(out, [inputs[i] for i in wanted], grad_output, create_graph=True, allow_unused=True)
    for i, g in zip(wanted, grads):
        result[i] = g
    return tuple(result)


def register_differentiable_op(op: str, fake: Callable, fake_backward: Callable, setup_context: Callable,
                               backward: Callable, double_backward: Optional[Callable] = None) -> None:
    """For `op` and its backward op `_<op>_backward`: fake kernels, and the autograd formula
    `backward(backward_op, ctx, *grads)` where backward_op is the namespace's `_<op>_backward`.

    The backward kernels are not differentiable themselves. Where a gradient is taken with
    create_graph=True (gradient penalties, double backpropagation), autograd runs the formula
    in grad mode, and `double_backward(ctx, *grads)` computes the gradients instead through the
    op's differentiable reference (reference_grads), so that they carry a graph. Without one,
    the kernel's gradients carry none (differentiating them raises)."""
    for namespace in ("fastrobust", "fastrobust_emu"):
        if not has_op(namespace, op):
            continue
        backward_op = getattr(getattr(torch.ops, namespace), f"_{op}_backward")
        torch.library.register_fake(f"{namespace}::{op}")(fake)
        torch.library.register_fake(f"{namespace}::_{op}_backward")(fake_backward)

        def formula(ctx, *grads, backward_op=backward_op):
            if double_backward is not None and torch.is_grad_enabled():  # create_graph=True
                return double_backward(ctx, *grads)
            return backward(backward_op, ctx, *grads)

        torch.library.register_autograd(f"{namespace}::{op}", formula, setup_context=setup_context)
