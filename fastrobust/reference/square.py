"""The Square attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020) in plain PyTorch, one
sample at a time: the oracle of fastrobust.attacks.Square, and its schedule.

Score-based and gradient-free: from a starting point on the threat ball's surface (L-inf:
vertical stripes of +-eps; L2: a grid of signed pseudo-Gaussian blocks scaled to norm eps), each
iteration redraws one square window of the perturbation and keeps the candidate when the loss
improves or the point is misclassified. The window's side shrinks with the iteration by
AutoAttack's schedule for p, the fraction of the image it covers:

    iteration (of 10000)  0-10  11-50  51-200  201-500  501-1000  1001-2000  2001-4000  4001-6000  6001-8000  8001-
    p / p_init             1    1/2    1/4     1/8      1/16      1/32       1/64       1/128      1/256      1/512

(with rescale_schedule, iteration i of n counts as i / n * 10000). L-inf: side
round(sqrt(p * H * W)), at least 1, the window's channels set to +-eps around the clean point
(one sign per channel). L2: side the same, at least 3 and odd; the window gets a fresh
pseudo-Gaussian bump plus its old content, and a second window's content is moved into it,
so that the perturbation keeps norm eps. The loss is the margin z_y - max_{j != y} z_j (or
-CE), minimised; a row stops when its margin is <= 0.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .l1_ball import project_l1_box

# (last iteration of the bracket out of 10000, divisor of p_init); past the last, 512.
P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


def p_selection(p_init: float, iteration: int, queries: int, rescale_schedule: bool = False) -> float:
    """The fraction of the image the window of `iteration` (0-based) covers."""
    it = int(iteration / queries * 10000) if rescale_schedule else iteration
    for last, divisor in P_SCHEDULE:
        if it <= last:
            return p_init / divisor
    return p_init / 512


def window_side(p: float, height: int, width: int, norm: str) -> int:
    """The side of the square window for coverage p on an H x W image."""
    side = int(round(math.sqrt(p * height * width)))
    if norm in ("l2", "l1"):
        side = max(side, 3)
        side += 1 - side % 2  # odd
    return min(max(side, 1), height, width)


def _unit(delta: torch.Tensor, norm: str) -> torch.Tensor:
    size = delta.pow(2).sum().sqrt() if norm == "l2" else delta.abs().sum()
    return delta / size if size > 0 else delta


def bump_rectangle(rows: int, cols: int, dtype=torch.float32, device=None, norm: str = "l2") -> torch.Tensor:
    """Nested rectangles around the centre, ring k weighted 1 / (k + 1)^2 (L2) or 1 / (k + 1)^4
    (L1), unit norm."""
    delta = torch.zeros(rows, cols, dtype=dtype, device=device)
    r0, c0 = rows // 2, cols // 2
    power = 2 if norm == "l2" else 4
    for k in range(max(r0, c0) + 1):
        delta[max(r0 - k, 0):min(r0 - k + 2 * k + 1, rows), max(c0 - k, 0):min(c0 - k + 2 * k + 1, cols)] += \
            1.0 / (k + 1) ** power
    return _unit(delta, norm)


def bump(side: int, dtype=torch.float32, device=None, norm: str = "l2") -> torch.Tensor:
    """The L2 (L1) attack's s x s window update: a positive bump over a negative one, unit L2
    (L1) norm (transposed at random by the caller)."""
    delta = torch.zeros(side, side, dtype=dtype, device=device)
    delta[: side // 2] = bump_rectangle(side // 2, side, dtype, device, norm)
    delta[side // 2:] = -bump_rectangle(side - side // 2, side, dtype, device, norm)
    return _unit(delta, norm)


def l2_start_side(height: int) -> int:
    """The side of the L2 starting point's blocks: a fifth of the height."""
    return max(height // 5, 1)


def l2_start_rows(size: int, side: int, start: Optional[int] = None) -> range:
    """Top (or left) edges of the L2 starting point's blocks: size // side of them from
    (H - 5 side) // 2 on (the columns use the rows' first edge, as AutoAttack's code does);
    blocks past the image edge are cropped."""
    first = (size - side * 5) // 2 if start is None else start
    return range(first, first + side * (size // side), side)


def margin_and_loss(logits: torch.Tensor, label: int, target: Optional[int], loss: str) -> Tuple[float, float]:
    """(margin, loss) of one row, both minimised; margin <= 0 means the goal holds.
    Untargeted: margin z_y - max_{j != y} z_j, loss the margin or -CE(z, y). Targeted (target t):
    margin max_{j != t} z_j - z_t, loss the margin or CE(z, t)."""
    logits = logits.double()
    k = label if target is None else target
    others = torch.cat([logits[:k], logits[k + 1:]]).max()
    margin = float(logits[k] - others) if target is None else float(others - logits[k])
    if loss == "margin":
        return margin, margin
    ce = float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([k], device=logits.device)))
    return margin, (-ce if target is None else ce)


def square_attack(model, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf", queries: int = 5000,
                  p_init: float = 0.8, loss: str = "margin", targets: Optional[torch.Tensor] = None,
                  rescale_schedule: bool = False, lo: float = 0.0, hi: float = 1.0,
                  seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x_adv, queries used per sample) of one run, sample by sample, for (N, C, H, W) x in
    [lo, hi]. Queries count the model calls on the sample, the starting point included."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    adv, used = x.clone(), torch.zeros(x.shape[0], dtype=torch.long)

    def rand(*shape):
        return torch.rand(shape, generator=gen, device=x.device)

    def sign(*shape):
        return torch.where(rand(*shape) < 0.5, -1.0, 1.0).to(x.dtype)

    def score(point, i):
        with torch.no_grad():
            logits = model(point[None])[0]
        return margin_and_loss(logits, int(y[i]), None if targets is None else int(targets[i]), loss)

    def random_bump(side):
        b = bump(side, x.dtype, x.device, norm)
        return b.t() if rand(1).item() < 0.5 else b

    def onto_l1_ball(x0, delta):
        """x0 + delta projected onto the L1 ball of radius eps (1 - 1e-6) within the box, as
        AutoAttack's Square-L1 (the margin keeps it strictly inside)."""
        return x0 + project_l1_box(x0, delta, eps * (1 - 1e-6), lo, hi).to(x0.dtype)

    c, h, w = x.shape[1:]
    for i in range(x.shape[0]):
        x0 = x[i]
        if norm == "linf":
            best = (x0 + eps * sign(c, 1, w)).clamp(lo, hi)
        else:
            init = torch.zeros_like(x0)
            s0 = l2_start_side(h)
            start = (h - s0 * 5) // 2
            for vh in l2_start_rows(h, s0):
                for vw in l2_start_rows(w, s0, start):
                    patch = init[:, vh:vh + s0, vw:vw + s0]
                    patch += random_bump(s0)[: patch.shape[1], : patch.shape[2]] * sign(c, 1, 1)
            if norm == "l2":
                best = (x0 + eps * init / (init.norm() + 1e-12)).clamp(lo, hi)
            else:
                best = onto_l1_ball(x0, init)
        margin, best_loss = score(best, i)
        used[i] = 1
        for it in range(queries):
            if margin <= 0:
                break
            side = window_side(p_selection(p_init, it, queries, rescale_schedule), h, w, norm)
            vh, vw = int(rand(1).item() * (h - side)), int(rand(1).item() * (w - side))
            if norm == "linf":
                cand = best.clone()
                cand[:, vh:vh + side, vw:vw + side] += 2 * eps * sign(c, 1, 1)
                cand = torch.minimum(torch.maximum(cand, x0 - eps), x0 + eps).clamp(lo, hi)
            elif norm == "l1":
                delta = best - x0
                vh2, vw2 = int(rand(1).item() * (h - side)), int(rand(1).item() * (w - side))
                window = delta[:, vh:vh + side, vw:vw + side]
                both = torch.zeros_like(delta[:1])
                both[:, vh:vh + side, vw:vw + side] = 1
                both[:, vh2:vh2 + side, vw2:vw2 + side] = 1
                windows_mass = (delta * both).abs().sum((1, 2), keepdim=True)
                room = (eps - delta.abs().sum()).clamp(min=0) / c
                new = random_bump(side) * sign(c, 1, 1) + window / (window.abs().sum((1, 2), keepdim=True) + 1e-12)
                # AutoAttack's scale: (room / C + the channel's mass in both windows) * C per channel
                new = new / (new.abs().sum((1, 2), keepdim=True) + 1e-12) * (room + windows_mass) * c
                delta[:, vh2:vh2 + side, vw2:vw2 + side] = 0
                delta[:, vh:vh + side, vw:vw + side] = new
                cand = onto_l1_ball(x0, delta)
            else:
                delta = best - x0
                vh2, vw2 = int(rand(1).item() * (h - side)), int(rand(1).item() * (w - side))
                window = delta[:, vh:vh + side, vw:vw + side]
                window_norm = window.pow(2).sum((1, 2), keepdim=True).sqrt()
                both = torch.zeros_like(delta[:1])
                both[:, vh:vh + side, vw:vw + side] = 1
                both[:, vh2:vh2 + side, vw2:vw2 + side] = 1
                windows_norm = (delta * both).pow(2).sum((1, 2), keepdim=True).sqrt()
                room = (eps ** 2 - delta.pow(2).sum()).clamp(min=0) / c
                new = random_bump(side) * sign(c, 1, 1) + window / (window_norm + 1e-12)
                new = new / (new.pow(2).sum((1, 2), keepdim=True).sqrt() + 1e-12) * (room + windows_norm ** 2).sqrt()
                delta[:, vh2:vh2 + side, vw2:vw2 + side] = 0
                delta[:, vh:vh + side, vw:vw + side] = new
                cand = (x0 + eps * delta / (delta.norm() + 1e-12)).clamp(lo, hi)
            cand_margin, cand_loss = score(cand, i)
            used[i] += 1
            if cand_loss < best_loss or cand_margin <= 0:
                best, margin = cand, cand_margin
            best_loss = min(best_loss, cand_loss)
        adv[i] = best
    return adv, used
