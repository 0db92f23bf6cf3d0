"""Wide ResNet (Zagoruyko and Komodakis 2016) for 32x32 inputs; WRN-34-10 is the CIFAR model
of Madry et al. 2018 and TRADES (Zhang et al. 2019), WRN-28-10 that of Carmon et al. 2019,
Gowal et al. 2020 and Rebuffi et al. 2021."""
from __future__ import annotations

from typing import Optional

from ..nn.normalize import Values
from ._checks import check_options, positive_int
from .preact_resnet import PreActBlock, PreActNetwork

BASE_WIDTHS = (16, 32, 64)  # the three stages, multiplied by widen_factor
STEM_WIDTH = 16


class WideResNet(PreActNetwork):
    """WRN-depth-widen_factor: (depth - 4) / 6 blocks in each of the stages layer1 .. layer3.
    Inputs (N, in_channels, H, W) in [0, 1] (32x32 for CIFAR); logits (N, num_classes).
    activation, denoise, first_stride, mean and std as in PreActResNet18."""

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10,
                 dropout: float = 0.0, in_channels: int = 3,
                 mean: Optional[Values] = None, std: Optional[Values] = None,
                 activation: str = "relu", denoise=None, first_stride: int = 1):
        super().__init__()
        positive_int(depth, "depth")
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
        positive_int(widen_factor, "widen_factor")
        denoise = check_options(num_classes, in_channels, activation, first_stride, denoise)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        self.depth, self.widen_factor = depth, widen_factor
        self.activation = activation
        self._build_stem(in_channels, STEM_WIDTH, first_stride, mean, std)
        blocks_per_stage = (depth - 4) // 6
        stages, in_planes = [], STEM_WIDTH
        for stage, base in enumerate(BASE_WIDTHS):
            planes = base * widen_factor
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(PreActBlock(in_planes, planes, stride, float(dropout), activation))
                in_planes = planes
            stages.append(blocks)
        self._build_head(stages, in_planes, num_classes, activation, denoise)


def wrn34_10(num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-34-10, the CIFAR-10 model of Madry et al. and TRADES (46.2M parameters)."""
    return WideResNet(depth=34, widen_factor=10, num_classes=num_classes, **kwargs)


def wrn28_10(num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-28-10 (36.5M parameters)."""
    return WideResNet(depth=28, widen_factor=10, num_classes=num_classes, **kwargs)
