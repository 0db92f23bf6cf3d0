"""Square: the score-based Square attack (Andriushchenko et al., ECCV 2020), as in AutoAttack.

No gradients: every iteration redraws one square window of the perturbation of each row still
robust and keeps the candidate where the loss improves or the goal is reached (the algorithm,
its schedule and its starting points: fastrobust.reference.square). All rows still robust are
evaluated in one forward per iteration; a row stops at its first success, and the loop when
every row has. Restarts run one after the other on the points still robust, as AutoAttack's.

Differences from AutoAttack's code, by design: each row draws its own window and signs (the
official code draws one window and one sign pattern per iteration for the whole batch; the
paper's code draws per image), and an L2 starting block past the image edge is cropped where
the official code fails on the shape.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import nn

from ..reference.square import bump, l2_start_rows, l2_start_side, p_selection, window_side
from .engine import Attack, Plan, Scalar
from .objectives import attack_loss
from .final_point import evaluate_point
from .l1_ball import project_l1_box
from .rows import RowOutcome, Rows, maths_dtype, row_mask
from .validation import check_choice, check_count, check_targets_match

SQUARE_LOSSES = ("margin", "ce")


class Square(Attack):
    """Square attack, L-inf, L2 or L1 (AutoAttack's version: p_init 0.8, 5000 queries).

    Args (besides Attack's eps, norm, lo, hi, seed, autocast, channels_last):
      queries:          iterations per restart (model calls per row, besides the one at the
                        starting point and the one that evaluates the result).
      p_init:           the fraction of the image the first windows cover, in (0, 1].
      loss:             "margin" (z_y - max_{j != y} z_j, targeted max_{j != t} z_j - z_t) or
                        "ce" (-CE, targeted CE on the target), minimised.
      restarts:         runs, one after the other on the points still robust.
      rescale_schedule: stretch the p schedule (written for 10000 iterations) over `queries`.
      targeted:         reach `targets` (given to the call) instead of any wrong class.
    Points misclassified (targeted: at their target) when clean are returned as they are.
    Inputs are images (N, C, H, W). AttackResult.forwards counts the model calls on rows;
    backwards is 0.
    """

    restart_batch = 1
    norms = ("linf", "l2", "l1")

    def __init__(self, model: nn.Module, eps: Scalar = 8 / 255, norm="linf", queries: int = 5000,
                 p_init: float = 0.8, loss: str = "margin", restarts: int = 1, rescale_schedule: bool = False,
                 targeted: bool = False, **kwargs):
        if kwargs.get("cuda_graph"):
            raise ValueError("cuda_graph: Square takes no gradient steps to capture; leave it False")
        super().__init__(model, eps=eps, norm=norm, **kwargs)
        self.queries = check_count(queries, "queries", 0)
        if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
            raise ValueError(f"p_init must be a number in (0, 1], got {p_init!r}")
        self.p_init = float(p_init)
        self.loss = check_choice(loss, SQUARE_LOSSES, "loss")
        self.restarts = check_count(restarts, "restarts", 1)
        self.rescale_schedule = bool(rescale_schedule)
        self.targeted = bool(targeted)
        self.goal = "target" if self.targeted else "fooled"

    def _check_targets(self, targets) -> None:
        check_targets_match(self.targeted, targets, "Square attack")

    def _plan(self, ctx, x0, y, targets) -> Plan:
        """The clean points first (one forward): those already misclassified (or at their
        target) are not attacked, as in AutoAttack."""
        if x0.dim() != 4:
            raise ValueError(f"x must be images (N, C, H, W) for the Square attack, got shape {tuple(x0.shape)}")
        return self._plan_after_clean_check(ctx, x0, y, targets, "cw" if self.loss == "margin" else "ce")

    # -- one pass --------------------------------------------------------------------------------
    def _scores(self, ctx, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor]):
        """(loss to minimise, margin) at x; margin <= 0: the goal holds."""
        logits = ctx.model.logits(x)
        ctx.count(x.shape[0], backward=False)
        margin = _margin(logits, y, targets)
        loss = margin if self.loss == "margin" else -attack_loss("ce", logits, y, targets)
        return loss, margin

    def _run_rows(self, ctx, rows: Rows, evaluate: bool) -> RowOutcome:
        x0, gen = rows.x0, rows.generator
        n, (h, w) = rows.n, x0.shape[2:]
        eps = rows.eps.to(maths_dtype(x0)).reshape(-1, 1, 1, 1)
        eps = eps.expand(n, 1, 1, 1) if eps.shape[0] == 1 else eps

        best = self._start(x0, eps, gen)
        loss, margin = self._scores(ctx, best, rows.y, rows.targets)
        nonfinite = ~torch.isfinite(loss)
        # a non-finite start is no point at all: any finite candidate improves on it
        loss = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, math.inf))
        margin = torch.where(torch.isfinite(margin), margin, torch.full_like(margin, math.inf))

        # The rows still robust, compacted: they are gathered once and written back when they
        # succeed (one host read per iteration, as AutoAttack's), not gathered every iteration.
        active = (margin > 0).nonzero()[:, 0]
        state = _Active(active, x0, best, loss, margin, nonfinite, eps, rows)
        for it in range(self.queries):
            if state.index.numel() == 0:
                break
            side = window_side(p_selection(self.p_init, it, self.queries, self.rescale_schedule), h, w, self.norm)
            cand = self._candidate(state.x0, state.best, state.eps, side, gen)
            cand_loss, cand_margin = self._scores(ctx, cand, state.y, state.targets)
            state.nonfinite |= ~torch.isfinite(cand_loss)
            improved = cand_loss < state.loss
            done = cand_margin <= 0
            if self.loss == "margin":  # the loss is the margin: a success always improves it
                keep = improved
                state.loss = state.margin = torch.where(improved, cand_loss, state.loss)
            else:
                keep = improved | done
                state.loss = torch.where(improved, cand_loss, state.loss)
                state.margin = torch.where(keep, cand_margin, state.margin)
            state.best = torch.where(row_mask(keep, cand), cand, state.best)
            if bool(done.any()):
                state.retire(done, best, loss, margin, nonfinite)
        state.retire(None, best, loss, margin, nonfinite)

        return evaluate_point(ctx, rows, best, evaluate, "cw" if self.loss == "margin" else "ce", nonfinite)

    # -- points ----------------------------------------------------------------------------------
    def _start(self, x0: torch.Tensor, eps: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, (c, h, w) = x0.shape[0], x0.shape[1:]
        if self.norm == "linf":  # vertical stripes of +-eps
            return (x0 + eps.to(x0.dtype) * _signs(gen, (n, c, 1, w), x0)).clamp(self.lo, self.hi)
        side = l2_start_side(h)
        delta = torch.zeros_like(x0, dtype=maths_dtype(x0))
        for vh in l2_start_rows(h, side):
            for vw in l2_start_rows(w, side, (h - side * 5) // 2):
                patch = delta[:, :, vh:vh + side, vw:vw + side]
                block = _bumps(gen, side, n, delta, self.norm)[:, :, : patch.shape[2], : patch.shape[3]]
                patch += block * _signs(gen, (n, c, 1, 1), delta)
        if self.norm == "l1":
            return self._onto_l1_ball(x0, delta, eps)
        delta = delta / (_l2(delta) + 1e-12) * eps
        return (x0 + delta.to(x0.dtype)).clamp(self.lo, self.hi)

    def _candidate(self, x0, best, eps, side: int, gen) -> torch.Tensor:
        n, (c, h, w) = x0.shape[0], x0.shape[1:]
        if self.norm == "linf":
            # One draw per row for its window's corner and its channels' signs. best + 2 eps s in
            # the window, clipped to the ball, is x0 + eps s there: the window's channels go to a
            # vertex of the ball (then the box), the rest stays.
            u = torch.rand(n, 2 + c, generator=gen, device=x0.device)
            vh, vw = (u[:, 0] * (h - side)).long(), (u[:, 1] * (w - side)).long()
            signs = torch.where(u[:, 2:] < 0.5, -1.0, 1.0).to(x0.dtype).reshape(n, c, 1, 1)
            vertex = torch.addcmul(x0, eps.to(x0.dtype), signs).clamp_(self.lo, self.hi)
            return torch.where(_window_mask(vh, vw, side, h, w), vertex, best)
        vh, vw = _corners(gen, n, h - side, x0.device), _corners(gen, n, w - side, x0.device)
        window = _window_mask(vh, vw, side, h, w)
        delta = (best - x0).to(maths_dtype(x0))
        vh2, vw2 = _corners(gen, n, h - side, x0.device), _corners(gen, n, w - side, x0.device)
        window2 = _window_mask(vh2, vw2, side, h, w)
        rows_i, rows_j = _window_index(vh, side), _window_index(vw, side)
        old = _gather_window(delta, rows_i, rows_j)  # (n, c, side, side)
        if self.norm == "l1":
            return self._l1_candidate(x0, delta, eps, old, window | window2, window2, rows_i, rows_j, side, gen)
        old_norm = old.pow(2).sum((2, 3), keepdim=True).sqrt()
        windows_norm = (delta * (window | window2)).pow(2).sum((2, 3), keepdim=True).sqrt()
        room = (eps.pow(2) - _l2(delta).pow(2)).clamp(min=0) / c
        new = _bumps(gen, side, n, delta, "l2") * _signs(gen, (n, c, 1, 1), delta) + old / (old_norm + 1e-12)
        new = new / (new.pow(2).sum((2, 3), keepdim=True).sqrt() + 1e-12) * (room + windows_norm.pow(2)).sqrt()
        delta = torch.where(window2, torch.zeros_like(delta), delta)
        _scatter_window(delta, rows_i, rows_j, new)
        delta = delta / (_l2(delta) + 1e-12) * eps
        return (x0 + delta.to(x0.dtype)).clamp(self.lo, self.hi)


    def _l1_candidate(self, x0, delta, eps, old, both, window2, rows_i, rows_j, side: int, gen) -> torch.Tensor:
        """The L2 move with L1 masses, then the projection onto the L1 ball (AutoAttack's Square-L1)."""
        n, c = x0.shape[:2]
        windows_mass = (delta * both).abs().sum((2, 3), keepdim=True)
        room = (eps - delta.abs().flatten(1).sum(1).reshape(-1, 1, 1, 1)).clamp(min=0) / c
        new = _bumps(gen, side, n, delta, "l1") * _signs(gen, (n, c, 1, 1), delta) + \
            old / (old.abs().sum((2, 3), keepdim=True) + 1e-12)
        # AutoAttack's scale: (room / C + the channel's mass in both windows) * C per channel
        new = new / (new.abs().sum((2, 3), keepdim=True) + 1e-12) * (room + windows_mass) * c
        delta = torch.where(window2, torch.zeros_like(delta), delta)
        _scatter_window(delta, rows_i, rows_j, new)
        return self._onto_l1_ball(x0, delta, eps)

    def _onto_l1_ball(self, x0: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 + delta projected onto the L1 ball of radius eps (1 - 1e-6) within the box (the
        margin, AutoAttack's, keeps the point strictly inside)."""
        dtype = maths_dtype(x0)
        radius = eps.reshape(-1).to(dtype) * (1 - 1e-6)
        moved = project_l1_box(x0.to(dtype), delta.to(dtype), radius, self.lo, self.hi)
        return (x0.to(dtype) + moved).to(x0.dtype)


class _Active:
    """The rows an attack pass still works on, gathered from the pass's full tensors."""

    def __init__(self, index, x0, best, loss, margin, nonfinite, eps, rows: Rows):
        self.index = index
        self.x0, self.best, self.eps = x0[index], best[index], eps[index]
        self.loss, self.margin, self.nonfinite = loss[index], margin[index], nonfinite[index]
        self.y = rows.y[index]
        self.targets = None if rows.targets is None else rows.targets[index]

    def retire(self, done: Optional[torch.Tensor], best, loss, margin, nonfinite) -> None:
        """Writes the rows `done` (None: all) back into the full tensors and drops them."""
        rows = self.index if done is None else self.index[done]
        pick = (lambda t: t) if done is None else (lambda t: t[done])
        best[rows], loss[rows], margin[rows] = pick(self.best), pick(self.loss), pick(self.margin)
        nonfinite[rows] = pick(self.nonfinite)
        if done is None:
            self.index = self.index[:0]
            return
        stay = ~done
        self.index = self.index[stay]
        self.x0, self.best, self.eps = self.x0[stay], self.best[stay], self.eps[stay]
        self.loss, self.margin, self.nonfinite = self.loss[stay], self.margin[stay], self.nonfinite[stay]
        self.y = self.y[stay]
        self.targets = None if self.targets is None else self.targets[stay]


def _margin(logits: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor]) -> torch.Tensor:
    """z_y - max_{j != y} z_j (targeted: max_{j != t} z_j - z_t), in float32 (float64 for
    float64 logits): the negative of the CW margin loss, written out in four ops because the
    loop calls it once per query on few rows (no gradient is taken)."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    k = (y if targets is None else targets)[:, None]
    own = z.gather(1, k)[:, 0]
    other = z.scatter(1, k, -math.inf).amax(1)
    return own - other if targets is None else other - own


def _signs(gen: torch.Generator, shape, like: torch.Tensor) -> torch.Tensor:
    """Uniform +-1 of like's dtype and device."""
    u = torch.rand(shape, generator=gen, device=like.device)
    return torch.where(u < 0.5, -1.0, 1.0).to(like.dtype)


def _corners(gen: torch.Generator, n: int, span: int, device) -> torch.Tensor:
    """Top (or left) edges in [0, span), 0 where span is 0: floor(U * span), as AutoAttack's."""
    return (torch.rand(n, generator=gen, device=device) * span).long()


def _window_mask(vh: torch.Tensor, vw: torch.Tensor, side: int, h: int, w: int) -> torch.Tensor:
    """bool (n, 1, H, W): each row's side x side window at (vh, vw), as the product of its
    row band and its column band (looked up in a table of the bands of that side)."""
    rows = _bands(side, h, vh.device)[vh]  # (n, H)
    cols = _bands(side, w, vh.device)[vw]  # (n, W)
    return rows[:, None, :, None] & cols[:, None, None, :]


@functools.lru_cache(maxsize=64)
def _bands(side: int, size: int, device) -> torch.Tensor:
    """bool (max(size - side, 1), size): row k is the band [k, k + side)."""
    start = torch.arange(max(size - side, 1), device=device)[:, None]
    i = torch.arange(size, device=device)[None, :]
    return (i >= start) & (i < start + side)


def _window_index(start: torch.Tensor, side: int) -> torch.Tensor:
    return start.reshape(-1, 1) + torch.arange(side, device=start.device)  # (n, side)


def _gather_window(t: torch.Tensor, rows_i: torch.Tensor, rows_j: torch.Tensor) -> torch.Tensor:
    n, c = t.shape[:2]
    b = torch.arange(n, device=t.device).reshape(n, 1, 1, 1)
    ch = torch.arange(c, device=t.device).reshape(1, c, 1, 1)
    return t[b, ch, rows_i.reshape(n, 1, -1, 1), rows_j.reshape(n, 1, 1, -1)]


def _scatter_window(t: torch.Tensor, rows_i: torch.Tensor, rows_j: torch.Tensor, values: torch.Tensor) -> None:
    n, c = t.shape[:2]
    b = torch.arange(n, device=t.device).reshape(n, 1, 1, 1)
    ch = torch.arange(c, device=t.device).reshape(1, c, 1, 1)
    t[b, ch, rows_i.reshape(n, 1, -1, 1), rows_j.reshape(n, 1, 1, -1)] = values


def _bumps(gen: torch.Generator, side: int, n: int, like: torch.Tensor, norm: str) -> torch.Tensor:
    """(n, 1, side, side): the L2 (L1) bump, transposed for a random half of the rows."""
    b = bump(side, like.dtype, like.device, norm)
    flip = torch.rand(n, generator=gen, device=like.device) < 0.5
    return torch.where(flip.reshape(n, 1, 1, 1), b.t(), b).reshape(n, 1, side, side)


def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-row L2 norm, shaped (n, 1, 1, 1)."""
    return t.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
