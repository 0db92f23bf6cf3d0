"""Attack rows: samples x row groups folded into one batch, and what a pass over them returns."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from ..ops import pgd_update_best_
from .objectives import objective, reached

Scalar = Union[float, torch.Tensor]


def fold(t: torch.Tensor, groups: int) -> torch.Tensor:
    """t repeated `groups` times along dim 0, group-major: row g*B + b is sample b of group g."""
    return t if groups == 1 else t.repeat(groups, *([1] * (t.dim() - 1)))


def row_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (N,) mask shaped to broadcast over the rows of `like`."""
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


def maths_dtype(x: torch.Tensor) -> torch.dtype:
    """The fused ops' maths type for x, also that of losses and step sizes: float64 for float64
    x, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def expand_rows(value: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """(n,) in dtype: a per-row eps/alpha tensor (one value (1,) or one per row)."""
    value = value.to(dtype)
    return value.expand(n) if value.numel() == 1 else value


def per_row_values(value: Scalar, index: Optional[torch.Tensor], groups: int, x: torch.Tensor) -> torch.Tensor:
    """eps/alpha for the rows: one value (1,), or per-sample values picked by `index` and
    folded; in maths_dtype(x), on x's device."""
    if not isinstance(value, torch.Tensor):
        return torch.full((1,), float(value), dtype=maths_dtype(x), device=x.device)
    value = value.to(device=x.device, dtype=maths_dtype(x)).reshape(-1)
    if value.numel() == 1:
        return value
    return fold(value if index is None else value[index], groups)


@dataclass
class Rows:
    """The rows one pass of an attack loop works on: `groups` row groups (restarts, or target
    classes x restarts) of the same samples, folded group-major into one batch.

    eps/alpha hold one value or one per row. first_group is the index of the first of these
    groups among all the groups of the call; it keys the random-start stream, so that groups
    run in separate passes (restart_batch) start from different points.
    """

    x0: torch.Tensor
    y: torch.Tensor
    targets: Optional[torch.Tensor]
    eps: torch.Tensor
    alpha: Optional[torch.Tensor]
    groups: int
    first_group: int
    goal: str
    seed: int
    generator: torch.Generator
    kappa: float = math.inf

    @property
    def n(self) -> int:
        return self.x0.shape[0]

    def loss_fn(self, kind) -> Callable[..., torch.Tensor]:
        """The per-row loss of a ModelOutput: a loss name, or a callable (see objectives.objective)."""
        return lambda output: objective(kind, output, self.y, self.targets, self.kappa)

    def reached(self, logits: torch.Tensor) -> torch.Tensor:
        return reached(self.goal, logits, self.y, self.targets)


@dataclass
class RowOutcome:
    """Per row: the point an attack pass keeps, the objective there and whether the goal holds.
    loss and success are None when the pass was asked not to evaluate its last iterate."""

    x: torch.Tensor
    loss: Optional[torch.Tensor]
    success: Optional[torch.Tensor]
    nonfinite: Optional[torch.Tensor] = None  # bool per row: some iterate had a non-finite loss


def usable_start(loss: torch.Tensor, success: torch.Tensor):
    """(loss, success, nonfinite) of a starting point as the best-point rule sees it: a
    non-finite loss is no point at all (-inf, not a success)."""
    usable = torch.isfinite(loss)
    return torch.where(usable, loss, torch.full_like(loss, -math.inf)), success & usable, ~usable


def merge_groups(best: RowOutcome, index: Optional[torch.Tensor], out: RowOutcome, groups: int) -> None:
    """Folds the `groups` row groups of `out` into the per-sample `best`, in place: a successful
    point first (the earliest group's), else the highest loss. `index` lists the samples that
    `out` ran on (None: all of them)."""
    if index is None:
        bx, bl, bs = best.x, best.loss, best.success
    else:
        # Gathered into best.x's strides: pgd_update_best_ updates best_x in place and wants them.
        bx = torch.empty_like(best.x[: index.numel()]).copy_(best.x[index])
        bl, bs = best.loss[index], best.success[index]
    b = bx.shape[0]
    bn = None if best.nonfinite is None else (best.nonfinite if index is None else best.nonfinite[index])
    for g in range(groups):
        rows = slice(g * b, (g + 1) * b)
        pgd_update_best_(bx, bl, bs, out.x[rows], out.loss[rows], out.success[rows], mode="first_success")
        if bn is not None and out.nonfinite is not None:
            bn.logical_or_(out.nonfinite[rows])
    if index is not None:
        best.x.index_copy_(0, index, bx)
        best.loss.index_copy_(0, index, bl)
        best.success.index_copy_(0, index, bs)
        if bn is not None:
            best.nonfinite.index_copy_(0, index, bn)


def take_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t[index] along dim 0, in t's memory layout."""
    return torch.empty_like(t[: index.numel()]).copy_(t[index])


def rows_subset(rows: Rows, index: torch.Tensor) -> Rows:
    """The rows `index` of `rows` (their clean points, labels, targets and radii)."""
    def pick(value):  # eps / alpha: one value for all rows, or one per row
        return value if value is None or value.numel() == 1 else value[index]
    targets = None if rows.targets is None else rows.targets[index]
    return dataclasses.replace(rows, x0=take_rows(rows.x0, index), y=rows.y[index], targets=targets,
                               eps=pick(rows.eps), alpha=pick(rows.alpha))
