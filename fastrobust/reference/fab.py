"""FAB (Croce & Hein, ICML 2020) in plain PyTorch, one sample at a time: the oracle of
fastrobust.attacks.FAB and of its projection (fastrobust.attacks.boundary_projection).

The projection: the smallest step d (in L-inf, L2 or L1) from t onto the hyperplane
w.z = b within the box [lo, hi]^D, or the box corner closest to it where the box does not
reach it. Solved here without sorting: the L-inf and L2 multipliers by bisection on the
monotone constraint sum, L1 by moving one coordinate at a time (largest |w_i| first).

The attack (one sample, one restart from the clean point): at the iterate x,
    the nearest linearised boundary l = argmin_k |f_k - f_y| / ||grad f_k - grad f_y||_dual
    (FAB-T: the boundary between y and the target), w = grad f_l - grad f_y, b = w.x - (f_l - f_y);
    d1 = proj(x), d2 = proj(x0);  alpha = min(max(|d1| / (|d1| + |d2|), 0), alpha_max);
    x = clip((1 - alpha)(x + eta d1) + alpha (x0 + eta d2));
    if x is misclassified: keep it if closest so far, then x = x0 + beta (x - x0).
"""
from __future__ import annotations

import math

import torch

_FLAT = {"linf": 0.0, "l2": 1e-8, "l1": 1e-8}


def hyperplane_step(t: torch.Tensor, w: torch.Tensor, b: float, norm: str, lo: float = 0.0, hi: float = 1.0,
                    iterations: int = 200) -> torch.Tensor:
    """d for one row: t, w (D,) float64, b a number; see the module docstring."""
    c = float((w * t).sum() - b)
    if c < 0:
        w, c = -w, -c
    moves = w.abs() > _FLAT[norm]
    weight = torch.where(moves, w.abs(), torch.zeros_like(w))
    cap = torch.where(w > 0, t - lo, hi - t).clamp(min=0)
    direction = -torch.sign(w) * moves
    if norm == "l1":
        size = torch.zeros_like(t)
        left = c
        for i in torch.argsort(weight, descending=True, stable=True).tolist():
            if left <= 0 or weight[i] == 0:
                break
            size[i] = min(float(cap[i]), left / float(weight[i]))
            left -= float(weight[i] * size[i])
        return direction * size

    def sizes(m: float) -> torch.Tensor:
        if m == math.inf:
            return torch.where(moves, cap, torch.zeros_like(cap))
        return torch.minimum(m * (weight if norm == "l2" else torch.ones_like(weight)), cap)

    def reach(m: float) -> float:
        return float((weight * sizes(m)).sum())

    if reach(math.inf) <= c:  # the box does not reach the hyperplane: the corner
        return direction * cap
    low, high = 0.0, 1.0
    while reach(high) < c:
        high *= 2
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (mid, high) if reach(mid) < c else (low, mid)
    return direction * sizes(high)


def _norm(d: torch.Tensor, norm: str) -> float:
    return float({"linf": d.abs().max(), "l2": d.norm(), "l1": d.abs().sum()}[norm])


def fab(model, x: torch.Tensor, y: torch.Tensor, norm: str = "linf", steps: int = 100, eps: float = math.inf,
        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, targets=None, lo: float = 0.0,
        hi: float = 1.0) -> torch.Tensor:
    """x_adv for (N, ...) x, sample by sample, one restart from the clean point (float64 maths):
    the closest misclassified point found where it lies within eps, else the clean point."""
    out = x.clone()
    dual = {"linf": 1, "l2": 2, "l1": math.inf}[norm]
    for i in range(x.shape[0]):
        x0 = x[i].double()
        label = int(y[i])
        with torch.no_grad():
            if int(model(x[i:i + 1]).argmax(1)) != label:
                continue
        xi, best, dist = x0.clone(), None, math.inf
        for _ in range(steps):
            xg = xi.to(x.dtype)[None].requires_grad_(True)
            logits = model(xg)[0]
            if targets is not None:
                t = int(targets[i])
                gap = logits[t] - logits[label]
                w = torch.autograd.grad(gap, xg)[0][0].double().flatten()
                f = float(gap.detach())
            else:
                grads = torch.stack([torch.autograd.grad(logits[k], xg, retain_graph=True)[0][0].double().flatten()
                                     for k in range(logits.shape[0])])
                z = logits.detach().double()
                gaps, normals = z - z[label], grads - grads[label]
                ratio = gaps.abs() / (normals.norm(p=dual, dim=1) + 1e-12)
                ratio[label] = math.inf
                k = int(ratio.argmin())
                w, f = normals[k], float(gaps[k])
            b = float((w * xi.flatten()).sum()) - f
            d1 = hyperplane_step(xi.flatten(), w, b, norm, lo, hi).reshape(x0.shape)
            d2 = hyperplane_step(x0.flatten(), w, b, norm, lo, hi).reshape(x0.shape)
            a1, a2 = max(_norm(d1, norm), 1e-8), max(_norm(d2, norm), 1e-8)
            alpha = min(max(a1 / (a1 + a2), 0.0), alpha_max)
            xi = ((xi + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha).clamp(lo, hi)
            with torch.no_grad():
                pred = int(model(xi.to(x.dtype)[None]).argmax(1))
            if (pred == int(targets[i])) if targets is not None else (pred != label):
                length = _norm(xi - x0, norm)
                if length < dist:
                    best, dist = xi.clone(), length
                xi = x0 + (xi - x0) * beta
        if best is not None and dist <= eps:
            out[i] = best.to(x.dtype)
    return out
