"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016) in plain PyTorch, one sample at a
time: the oracle of fastrobust.attacks.DeepFool.

A minimal-perturbation attack: at each iterate it linearises the model around x and steps to
the nearest linearised decision boundary among the candidate classes (the `candidates` top
classes of the clean logits, the label first):

    f'_k = f_k(x) - f_y(x),  w'_k = grad f_k(x) - grad f_y(x),
    l = argmin_k |f'_k| / ||w'_k||_q          (q = 2 for L2, 1 for L-inf: the dual norm)
    r = (|f'_l| + 1e-4) w'_l / ||w'_l||_2^2   (L2)   or   (|f'_l| + 1e-4) sign(w'_l) / ||w'_l||_1   (L-inf)

and the iterate is x0 + (1 + overshoot) * (sum of the r so far), clipped to the box, until
the label changes or `steps` iterations have run. With a finite eps the result is projected
onto the eps-ball around x0 (then the box) at the end.
"""
from __future__ import annotations

import math

import torch


def deepfool(model, x: torch.Tensor, y: torch.Tensor, norm: str = "l2", steps: int = 50, overshoot: float = 0.02,
             candidates: int = 10, eps: float = math.inf, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """x_adv for (N, ...) x, sample by sample (float64 maths)."""
    adv = x.clone()
    for i in range(x.shape[0]):
        x0 = x[i:i + 1].double()
        with torch.no_grad():
            clean = model(x0.to(x.dtype)).double()[0]
        if int(clean.argmax()) != int(y[i]):
            continue
        label = int(y[i])
        order = [int(k) for k in clean.argsort(descending=True) if int(k) != label]
        classes = [label] + order[: max(candidates, 2) - 1]
        r_tot = torch.zeros_like(x0)
        point = x0.clone()
        for _ in range(steps):
            inp = point.to(x.dtype).requires_grad_(True)
            logits = model(inp)[0].double()
            if int(logits.argmax()) != label:
                break
            grads = [torch.autograd.grad(logits[k], inp, retain_graph=True)[0].double() for k in classes]
            best = None
            for k, grad in zip(classes[1:], grads[1:]):
                f_k = float(logits[k].detach() - logits[label].detach())
                w_k = grad - grads[0]
                size = float(w_k.norm(p=2 if norm == "l2" else 1))
                dist = abs(f_k) / (size + 1e-8)
                if best is None or dist < best[0]:
                    best = (dist, f_k, w_k, size)
            _, f_l, w_l, size = best
            if size > 0:
                if norm == "l2":
                    r_tot += (abs(f_l) + 1e-4) / size ** 2 * w_l
                else:
                    r_tot += (abs(f_l) + 1e-4) / size * w_l.sign()
            point = (x0 + (1 + overshoot) * r_tot).clamp(lo, hi)
        delta = point - x0
        if math.isfinite(eps):
            if norm == "l2":
                delta = delta * min(1.0, eps / (float(delta.norm()) + 1e-12))
            else:
                delta = delta.clamp(-eps, eps)
        adv[i] = (x0 + delta).clamp(lo, hi)[0].to(x.dtype)
    return adv
