"""Registers an op's fake kernels and autograd formula in every namespace the extension
defines it in: `fastrobust` (CPU/CUDA kernels) and `fastrobust_emu` (the CUDA device code
run by the emulator), so that both go through torch.compile, opcheck and autograd alike."""
from __future__ import annotations

from typing import Callable

import torch

from .._extension import HAS_EMU, HAS_EXT


def has_op(namespace: str, op: str) -> bool:
    enabled = HAS_EXT if namespace == "fastrobust" else HAS_EMU
    return enabled and hasattr(getattr(torch.ops, namespace), op)


def register_differentiable_op(op: str, fake: Callable, fake_backward: Callable, setup_context: Callable,
                               backward: Callable) -> None:
    """For `op` and its backward op `_<op>_backward`: fake kernels, and the autograd formula
    `backward(backward_op, ctx, *grads)` where backward_op is the namespace's `_<op>_backward`."""
    for namespace in ("fastrobust", "fastrobust_emu"):
        if not has_op(namespace, op):
            continue
        backward_op = getattr(getattr(torch.ops, namespace), f"_{op}_backward")
        torch.library.register_fake(f"{namespace}::{op}")(fake)
        torch.library.register_fake(f"{namespace}::_{op}_backward")(fake_backward)
        torch.library.register_autograd(
            f"{namespace}::{op}",
            lambda ctx, *grads, backward_op=backward_op: backward(backward_op, ctx, *grads),
            setup_context=setup_context)
