"""Sparta suite: the fused gated ReLU against its eager reference and torch.compile.

Shapes are the activations of a CIFAR ResNet-18 (one per stage: C x H x W = 64x32x32,
128x16x16, 256x8x8, 512x4x4), k = 3, batch 256 on CUDA and 32 on CPU (4 with --quick),
fp32 and bf16, forward alone and forward + backward (grads of x, weight and bias).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch

from .harness import FUSED, MODES, REFERENCE, Case, Suite

NAME = "sparta"
RESNET18_CIFAR_STAGES = ((64, 32), (128, 16), (256, 8), (512, 4))  # (channels, H = W)
KERNEL_SIZE = 3
BATCH = {"cuda": 256, "cpu": 32}
QUICK_BATCH = 4
DEFAULT_DTYPES = (torch.float32, torch.bfloat16)
PARAM_SCALE = 0.1  # a trained gate is far from 0; zeros would make the gate a constant 1/2


def make_inputs(case: Case, gen: torch.Generator) -> Dict[str, torch.Tensor]:
    shapes = dict(case.shapes)
    return {
        "x": torch.randn(shapes["x"], generator=gen),
        "weight": PARAM_SCALE * torch.randn(shapes["weight"], generator=gen),
        "bias": PARAM_SCALE * torch.randn(shapes["bias"], generator=gen),
    }


def fused(case: Case):
    import fastrobust

    if not fastrobust.HAS_EXT:  # the op would silently run the reference
        raise RuntimeError(f"fastrobust._C is not built: {fastrobust.EXT_ERROR}")
    return fastrobust.ops.sparta


def reference(case: Case):
    from fastrobust.reference import sparta

    return sparta


def make_cases(device: str, dtypes: Iterable[torch.dtype], batch: int, k: int = KERNEL_SIZE):
    return [
        Case(suite=NAME, label=f"C{c} H{hw}", device=device, dtype=dtype, mode=mode,
             shapes=(("x", (batch, c, hw, hw)), ("weight", (c, 1, k, k)), ("bias", (c,))),
             params=("weight", "bias"))
        for mode in MODES
        for dtype in dtypes
        for c, hw in RESNET18_CIFAR_STAGES
    ]


def build_suite(device: str, dtypes: Optional[Iterable[torch.dtype]] = None, quick: bool = False) -> Suite:
    batch = QUICK_BATCH if quick else BATCH[torch.device(device).type]
    return Suite(
        name=NAME,
        cases=make_cases(device, dtypes or DEFAULT_DTYPES, batch),
        implementations={FUSED: fused, REFERENCE: reference},
        make_inputs=make_inputs,
        description=f"fastrobust.ops.sparta vs its eager reference, CIFAR ResNet-18 shapes, "
                    f"batch {batch}, k={KERNEL_SIZE}",
    )
