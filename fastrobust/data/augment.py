"""Batch-wise CIFAR augmentation on the data's own device: random crop with zero padding and
random horizontal flip, with tensor ops only (no Python loop over the samples).

Matches torchvision's `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()` per sample: each
image is zero-padded by `padding` on every side, an H x W window at a uniformly random offset
(0..2*padding in each direction, independently per sample) is cut out, and the window is
mirrored left-right with probability 1/2.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _draw(shape, high: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """Integers in [0, high) drawn on the generator's device (the default one's when None),
    then moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(0, high, shape, generator=generator, device=gen_device).to(device)


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: Optional[torch.Generator] = None,
                     *, flip: bool = True) -> torch.Tensor:
    """Per-sample random crop of the zero-padded image and random horizontal flip (p = 0.5).

    x: (N, C, H, W) of any dtype on any device; returns a new tensor of the same shape, dtype,
    device and memory format. Offsets and flips are drawn from `generator` (on its own device;
    a CPU generator for CUDA data works, its draws are copied over) or from torch's default
    generator of x's device, so a seeded generator makes the result deterministic.
    padding=0 gives the image itself (flipped or not); flip=False turns the flips off.
    """
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    n, c, h, w = x.shape
    device = x.device
    # Offsets first, then flips: the generator's stream is consumed in a fixed order.
    offsets = _draw((2, n), 2 * padding + 1, generator, device)   # row, column offset per sample
    flips = _draw((n,), 2, generator, device).bool() if flip else None
    if n == 0:
        return x.clone()
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = F.pad(x.contiguous(), (padding, padding, padding, padding)) if padding else x.contiguous()

    rows = offsets[0, :, None] + torch.arange(h, device=device)            # (N, H)
    cols = torch.arange(w, device=device).expand(n, w)                    # (N, W)
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    cols = offsets[1, :, None] + cols
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w)  # into the flat H'W'
    out = torch.gather(padded.view(n, c, hp * wp), 2, index.expand(n, c, h * w)).view(n, c, h, w)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class RandomCropFlip:
    """Callable form of random_crop_flip for TensorLoader(augment=...): `aug(x, generator=g)`."""

    def __init__(self, padding: int = 4, flip: bool = True):
        self.padding = padding
        self.flip = flip

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return random_crop_flip(x, self.padding, generator, flip=self.flip)

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"
