"""HopSkipJump (Chen, Jordan & Wainwright, IEEE S&P 2020) in plain PyTorch, one sample at a
time: the oracle of fastrobust.attacks.HopSkipJump (its docstring gives the algorithm and the
original code's constants), untargeted, decisions only."""
from __future__ import annotations

import math

import torch


def hop_skip_jump(model, x: torch.Tensor, y: torch.Tensor, norm: str = "l2", iterations: int = 40,
                  init_evals: int = 100, max_evals: int = 10000, gamma: float = 1.0, init_tries: int = 1000,
                  lo: float = 0.0, hi: float = 1.0, seed: int = 0) -> torch.Tensor:
    """x_adv for (N, ...) x, sample by sample; a sample misclassified when clean, or for which
    no uniform-noise draw is misclassified, stays at x."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    adv = x.clone()
    dims = x[0].numel()
    theta = gamma / (dims ** 1.5 if norm == "l2" else dims ** 2)

    def fooled(points, label):
        with torch.no_grad():
            return model(points.clamp(lo, hi)).argmax(1) != label

    def distance(d):
        return float(d.norm()) if norm == "l2" else float(d.abs().max())

    def project(x0, point, alpha):
        if norm == "l2":
            return (1 - alpha) * x0 + alpha * point
        return torch.minimum(torch.maximum(point, x0 - alpha), x0 + alpha)

    def to_boundary(x0, point, label):
        before = distance(point - x0)
        high, tol = (1.0, theta) if norm == "l2" else (before, min(before * theta, theta))
        low = 0.0
        while (high - low) / max(tol, 1e-38) > 1:
            mid = (low + high) / 2
            if bool(fooled(project(x0, point, mid)[None], label)):
                high = mid
            else:
                low = mid
        return project(x0, point, high), before

    for i in range(x.shape[0]):
        x0, label = x[i], int(y[i])
        if bool(fooled(x0[None], label)):
            continue
        start = None
        for _ in range(init_tries):
            draw = lo + (hi - lo) * torch.rand(x0.shape, generator=gen, device=x.device, dtype=x.dtype)
            if bool(fooled(draw[None], label)):
                start = draw
                break
        if start is None:
            continue
        low, high = 0.0, 1.0
        while high - low > 0.001:
            mid = (low + high) / 2
            if bool(fooled(((1 - mid) * x0 + mid * start)[None], label)):
                high = mid
            else:
                low = mid
        point, before = to_boundary(x0, (1 - high) * x0 + high * start, label)
        for t in range(1, iterations + 1):
            dist = distance(point - x0)
            delta = 0.1 * (hi - lo) if t == 1 else (math.sqrt(dims) if norm == "l2" else dims) * theta * before
            evals = min(int(init_evals * math.sqrt(t)), max_evals)
            shape = (evals,) + tuple(x0.shape)
            if norm == "l2":
                probes = torch.randn(shape, generator=gen, device=x.device, dtype=x.dtype)
            else:
                probes = 2 * torch.rand(shape, generator=gen, device=x.device, dtype=x.dtype) - 1
            probes = probes / probes.flatten(1).norm(dim=1).reshape(-1, *([1] * x0.dim()))
            probed = (point + delta * probes).clamp(lo, hi)
            probes = (probed - point) / delta
            sign = fooled(probed, label).to(x.dtype) * 2 - 1
            mean = float(sign.mean())
            weights = sign.new_full(sign.shape, mean) if abs(mean) == 1 else sign - mean
            grad = (weights.reshape(-1, *([1] * x0.dim())) * probes).mean(0)
            grad = grad / (grad.norm() + 1e-12)
            update = grad if norm == "l2" else grad.sign()
            step = dist / math.sqrt(t)
            for _ in range(40):
                if bool(fooled((point + step * update)[None], label)):
                    break
                step /= 2
            else:
                step = 0.0
            point, before = to_boundary(x0, (point + step * update).clamp(lo, hi), label)
        adv[i] = point
    return adv
