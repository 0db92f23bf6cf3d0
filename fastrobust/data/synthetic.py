"""Synthetic classification data of any shape, for benchmarks and tests.

Each class c has a fixed random prototype P_c (uniform in [0, 1], one value per element of
`shape`, drawn from `seed` alone). A sample of class c is

    x = (1 - noise) * P_c + noise * U,    U uniform in [0, 1] per element,

a convex combination, so x lies in [0, 1] without clipping. The classes are balanced (n //
num_classes each, the first n % num_classes classes one more) and shuffled. With the default
noise=0.5 the per-element signal and noise have the same spread, and as soon as a sample has
more than a few dozen elements a linear model separates the classes almost perfectly: the data
are meant to be learnable (a model beats chance), not hard. Pixel mean is 0.5, pixel standard
deviation sqrt(((1 - noise)^2 + noise^2) / 12) (0.204 at noise=0.5).

The "train" and "test" splits share the prototypes and draw different samples. Draws are made
on `device`: the same arguments give the same tensors on the same kind of device, while a CPU
and a CUDA run draw different noise (labels and prototypes are the same everywhere).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch

SPLITS = ("train", "test")
# Keeps the split streams apart from each other and from the prototype stream.
_SPLIT_OFFSET = {"train": 1, "test": 2}


def _seeded(seed: int, stream: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + stream) % (2 ** 63))
    return gen


def synthetic_pixel_stats(noise: float = 0.5) -> Tuple[float, float]:
    """(mean, std) of one element of synthetic_dataset's x, for a Normalize layer."""
    return 0.5, math.sqrt(((1.0 - noise) ** 2 + noise ** 2) / 12.0)


def synthetic_dataset(n: int, shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                      seed: int = 0, device: Union[str, torch.device] = "cpu", *,
                      split: str = "train", noise: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x, y): x float32 (n, *shape) in [0, 1], y int64 (n,) in [0, num_classes).

    Class prototypes plus uniform noise (see the module docstring). Cheap: 50,000 images of
    3x32x32 take a fraction of a second (one uniform draw and one add of the prototypes).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    shape = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape):
        raise ValueError(f"shape must have positive sizes, got {shape}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must lie in [0, 1], got {noise}")
    device = torch.device(device)
    cpu = torch.device("cpu")

    # Small draws on the CPU (the same on every device): prototypes and shuffled balanced labels.
    prototypes = torch.rand((num_classes, *shape), generator=_seeded(seed, 0, cpu))
    stream = _SPLIT_OFFSET[split]
    perm = torch.randperm(n, generator=_seeded(seed, stream, cpu))
    y = (perm % num_classes).to(device)
    prototypes = prototypes.mul_(1.0 - noise).to(device)

    # The big draw on the device, then x = noise * U + (1 - noise) * P[y] in place.
    x = torch.rand((n, *shape), generator=_seeded(seed, stream, device), device=device)
    x.mul_(noise)
    if n == 0:
        return x, y
    if device.type == "cpu":
        # one-hot(y) @ P adds exactly P[y] (products with 0 and 1 are exact in fp32); a GEMM
        # is several times faster on a CPU than gathering the rows of P.
        one_hot = torch.nn.functional.one_hot(y, num_classes).to(torch.float32)
        x.view(n, -1).addmm_(one_hot, prototypes.view(num_classes, -1))
    else:
        # a GPU matmul might round P to TF32; the gather is exact and fast there
        chunk = max(1, (1 << 24) // prototypes[0].numel())  # bounds the gathered temporary
        for start in range(0, n, chunk):
            x[start:start + chunk].add_(prototypes[y[start:start + chunk]])
    return x, y
