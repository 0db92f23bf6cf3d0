"""DUNet: the denoising U-Net of HGD (Liao et al., CVPR 2018; the official Exps/sample/
inception.py `Denoise`, spec/methods-more.md §4.1).

    D = DUNet(in_channels=3)                 # the official widths, for ImageNet-size inputs
    D = DUNet.small(in_channels=1)           # three stages: 8x8 digits, 32x32 CIFAR
    x_hat = D(x)                             # x + head(U-Net(x)): the net predicts -noise

Encoder: stages of conv3x3 (no bias) - BatchNorm - ReLU blocks, the first block of every stage
but the first with stride 2. Decoder, from deep to shallow: bilinear up-sampling to the exact
size of the matching encoder stage (align_corners=False; odd sizes work), concatenation with
that stage's output, blocks. Head: a 1x1 convolution without bias back to in_channels, added
to the input (the global residual).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import positive_int

OFFICIAL_WIDTHS = (64, 128, 256, 256, 256)
OFFICIAL_BLOCKS = (2, 3, 3, 3, 3)
OFFICIAL_BACK_WIDTHS = (64, 128, 256, 256)
OFFICIAL_BACK_BLOCKS = (2, 3, 3, 3)


class ConvBNReLU(nn.Sequential):
    """conv3x3 (padding 1, no bias) - BatchNorm - ReLU: the official `Conv` block."""

    def __init__(self, n_in: int, n_out: int, stride: int = 1):
        super().__init__(nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(n_out),
                         nn.ReLU(inplace=True))


def _ints(values: Sequence[int], name: str) -> Tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {values!r}")
    return tuple(positive_int(v, name) for v in values)


class DUNet(nn.Module):
    """The HGD denoiser. See the module docstring.

    Args:
        in_channels: image channels (3; 1 for digits).
        widths, blocks: the encoder's stage widths and blocks per stage (official
            (64, 128, 256, 256, 256) and (2, 3, 3, 3, 3)).
        back_widths, back_blocks: the decoder's, one stage fewer than the encoder (official
            (64, 128, 256, 256) and (2, 3, 3, 3)); stage i meets encoder stage i's output.
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = OFFICIAL_WIDTHS,
                 blocks: Sequence[int] = OFFICIAL_BLOCKS, back_widths: Sequence[int] = OFFICIAL_BACK_WIDTHS,
                 back_blocks: Sequence[int] = OFFICIAL_BACK_BLOCKS):
        super().__init__()
        positive_int(in_channels, "in_channels")
        widths, blocks = _ints(widths, "widths"), _ints(blocks, "blocks")
        back_widths, back_blocks = _ints(back_widths, "back_widths"), _ints(back_blocks, "back_blocks")
        if len(widths) < 2 or len(blocks) != len(widths):
            raise ValueError(f"widths and blocks must have the same length >= 2 (encoder stages), got "
                             f"{len(widths)} and {len(blocks)}")
        if len(back_widths) != len(widths) - 1 or len(back_blocks) != len(back_widths):
            raise ValueError(f"back_widths and back_blocks must have one stage fewer than the encoder "
                             f"({len(widths) - 1}), got {len(back_widths)} and {len(back_blocks)}")
        self.in_channels = in_channels
        fwd, n_in = [], in_channels
        for i, (width, count) in enumerate(zip(widths, blocks)):
            stage = [ConvBNReLU(n_in if j == 0 else width, width, stride=2 if i > 0 and j == 0 else 1)
                     for j in range(count)]
            fwd.append(nn.Sequential(*stage))
            n_in = width
        back = [None] * len(back_widths)
        n_in = widths[-1]  # the deepest encoder stage's output, up-sampled
        for i in range(len(back_widths) - 1, -1, -1):
            n_in += widths[i]  # the concatenated skip of encoder stage i
            back[i] = nn.Sequential(*[ConvBNReLU(n_in if j == 0 else back_widths[i], back_widths[i])
                                      for j in range(back_blocks[i])])
            n_in = back_widths[i]
        self.fwd = nn.ModuleList(fwd)
        self.back = nn.ModuleList(back)
        self.head = nn.Conv2d(back_widths[0], in_channels, 1, bias=False)

    @classmethod
    def small(cls, in_channels: int = 3, width: int = 32) -> "DUNet":
        """Three encoder stages (width, 2 width, 2 width; 2 blocks each) and two decoder stages:
        the official layout cut to the depth an 8x8 or 32x32 image allows."""
        w = positive_int(width, "width")
        return cls(in_channels, (w, 2 * w, 2 * w), (2, 2, 2), (w, 2 * w), (2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        skips = []
        out = x
        for i, stage in enumerate(self.fwd):
            out = stage(out)
            if i < len(self.fwd) - 1:
                skips.append(out)
        for i in range(len(self.back) - 1, -1, -1):
            out = F.interpolate(out, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            out = self.back[i](torch.cat((out, skips[i]), dim=1))
        return x + self.head(out)
