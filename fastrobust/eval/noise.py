"""Accuracy under random Gaussian noise: x + N(0, sigma^2) per pixel, clipped to the input box.

TisODE's evaluation (spec/methods-more.md §2.5) reports it at sigma = 100/255 on MNIST, both
over all points and over the points classified correctly when clean. It is not an attack:
evaluate() reports it next to the cascade (EvalReport.noise), and a point failing under noise
does not change the robust accuracy.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .inference import predict


@dataclass
class NoiseResult:
    """sigma: the noise's standard deviation in input units ([0, 1] pixels).
    accuracy: fraction of all n points classified correctly under noise.
    accuracy_of_clean_correct: the same fraction among the clean-correct points (None if none).
    """

    sigma: float
    accuracy: float
    accuracy_of_clean_correct: Optional[float]
    time_s: float

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def check_sigmas(sigmas: Sequence[float]) -> List[float]:
    """The sigmas as floats; ValueError naming `noise` for anything but finite numbers > 0."""
    if isinstance(sigmas, (str, bytes)) or not hasattr(sigmas, "__iter__"):
        raise ValueError(f"noise must be a sequence of standard deviations > 0, got {sigmas!r}")
    out = []
    for s in sigmas:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise ValueError(f"noise: every standard deviation must be a finite number > 0, got {s!r}")
        out.append(float(s))
    return out


def noise_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float], *,
                   clean_correct: torch.Tensor, seed: Optional[int], batch_size: int, device: torch.device,
                   autocast: Optional[torch.dtype] = None, lo: float = 0.0, hi: float = 1.0) -> List[NoiseResult]:
    """One NoiseResult per sigma: the model's accuracy on clip(x + sigma * N(0, 1), lo, hi).
    The noise is drawn on the CPU from a generator seeded by (seed, index of sigma), so a run
    repeats exactly on any device (seed None: fresh noise)."""
    import time

    results = []
    y_dev = y.to(device)
    clean = clean_correct.to(device)
    n_clean = int(clean.sum())
    for i, sigma in enumerate(check_sigmas(sigmas)):
        t0 = time.perf_counter()
        g = torch.Generator()
        g.manual_seed(torch.seed() if seed is None else (int(seed) * 1000003 + i) % (2 ** 63))
        correct = torch.zeros(x.shape[0], dtype=torch.bool, device=device)
        for first in range(0, x.shape[0], batch_size):
            xb = x[first:first + batch_size].detach().cpu()
            noisy = (xb + sigma * torch.randn(xb.shape, generator=g, dtype=xb.dtype)).clamp(lo, hi)
            correct[first:first + batch_size] = predict(model, noisy, batch_size, device, autocast) == \
                y_dev[first:first + batch_size]
        total = int(correct.sum())
        both = int((correct & clean).sum())
        results.append(NoiseResult(sigma, total / max(x.shape[0], 1), both / n_clean if n_clean else None,
                                   time.perf_counter() - t0))
    return results
