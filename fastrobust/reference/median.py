"""3x3 per-channel median filter (the `median` variant of NLM feature denoising) in plain PyTorch.

    median3x3              the oracle of the fused op `median3x3`: the nine values of every
                           3x3 window sorted with torch.sort(stable=True), position 4 taken
    median3x3_unfold_median  the usual eager version (unfold + torch.median), the benchmark
                           baseline

Rules (the fused op's contract, see csrc/kernels/median.h):
  - padding: reflect, as torch's 'reflect' mode (index -1 reads 1, index n reads n - 2); along
    a dimension of size 1, where reflection is undefined, the neighbour index stays 0
    (replicate);
  - window positions are numbered row-major, (dy + 1) * 3 + (dx + 1);
  - the median is the 5th smallest (index 4) of the nine (value, position) pairs in
    lexicographic order: equal values are ranked by window position (a stable sort);
  - NaN: if any of the nine values is NaN the output is NaN, selected at the first NaN's
    position (torch.median propagates NaN);
  - gradient: each output's gradient goes to the pixel it selected (for a reflected border
    cell, the pixel the cell mirrors), summed over the outputs that selected it.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .._checks.median import check_median_args

WINDOW = 9
MEDIAN_RANK = 4


def _reflect_index(n: int, device: torch.device) -> torch.Tensor:
    """Indices 0..n+1 of the padded dimension into the unpadded one: [r(-1), 0, .., n-1, r(n)]."""
    if n == 1:
        return torch.zeros(3, dtype=torch.long, device=device)
    return torch.cat([torch.tensor([1], device=device), torch.arange(n, device=device),
                      torch.tensor([n - 2], device=device)])


def windows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W, 9): the reflected 3x3 window of every pixel, positions row-major.
    Built by index_select and unfold, so gradients flow back to the mirrored pixels."""
    check_median_args(x)
    b, c, h, w = x.shape
    if x.numel() == 0:
        return x.new_empty((b, c, h, w, WINDOW))
    padded = x.index_select(2, _reflect_index(h, x.device)).index_select(3, _reflect_index(w, x.device))
    return padded.unfold(2, 3, 1).unfold(3, 3, 1).reshape(b, c, h, w, WINDOW)


def median3x3_with_arg(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, arg): the median of every reflected 3x3 window and its window position (uint8)."""
    win = windows(x)
    if win.numel() == 0:
        return x.new_empty(x.shape), torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    order = torch.sort(win.detach(), dim=-1, stable=True).indices
    position = order[..., MEDIAN_RANK]
    isnan = torch.isnan(win.detach())
    first_nan = isnan.to(torch.uint8).argmax(dim=-1)  # the first maximal value's index
    position = torch.where(isnan.any(dim=-1), first_nan, position)
    y = win.gather(-1, position.unsqueeze(-1)).squeeze(-1)
    return y, position.to(torch.uint8)


def median3x3(x: torch.Tensor) -> torch.Tensor:
    """Per-channel 3x3 median filter, stride 1, same size, reflect padding (replicate along a
    dimension of size 1); x (B, C, H, W) floating, any layout; returns a contiguous tensor of
    x's shape and dtype. Ties go to the lower window position, NaN propagates; the gradient
    goes to the selected pixel. The oracle of the fused op."""
    return median3x3_with_arg(x)[0].contiguous()


def median3x3_unfold_median(x: torch.Tensor) -> torch.Tensor:
    """The common eager median filter: pad, unfold, torch.median over the window (the
    benchmark baseline). Same padding; ties and their gradient may go elsewhere than the
    fused op's rule (torch.median does not document which equal element it picks)."""
    check_median_args(x)
    if x.numel() == 0:
        return x.new_empty(x.shape)
    b, c, h, w = x.shape
    if h > 1 and w > 1:
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        win = padded.unfold(2, 3, 1).unfold(3, 3, 1).reshape(b, c, h, w, WINDOW)
    else:  # reflection is undefined along a dimension of size 1
        win = windows(x)
    return win.median(dim=-1).values.contiguous()
