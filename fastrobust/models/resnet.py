"""ResNet-18 with the CIFAR stem (He et al. 2016; the CIFAR variant of kuangliu/pytorch-cifar
used across the adversarial-training literature): a 3x3 stride-1 stem convolution and no
max-pool, then four stages of two BasicBlocks."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.normalize import Values
from ._checks import apply_denoise, check_options, input_normalization
from .activations import make_activation
from .preact_resnet import BLOCKS_PER_STAGE, STAGE_WIDTHS  # the CIFAR ResNet-18 layout


class BasicBlock(nn.Module):
    """act2(BN(conv3x3(act1(BN(conv3x3(x))))) + shortcut(x)), the shortcut a 1x1 convolution
    with BN where the shape changes (He et al. 2016); act1 and act2 (planes wide) are modules
    of fastrobust.models.activations (ReLU by default)."""

    def __init__(self, in_planes: int, planes: int, stride: int, activation: str = "relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = make_activation(activation, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_activation(activation, planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """Inputs (N, in_channels, H, W) in [0, 1] (32x32 for CIFAR); logits (N, num_classes).

    normalize - conv1 (3x3, stride first_stride) - bn1 - act1 - layer1 .. layer4 (two
    BasicBlocks each; 64, 128, 256, 512 channels; Xie et al.'s res2 .. res5) - global average
    pooling - linear. activation, denoise, first_stride, mean and std as in PreActResNet18.
    ResNet18CIFS is this network with CIFS layers in layer4.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 mean: Optional[Values] = None, std: Optional[Values] = None,
                 activation: str = "relu", denoise=None, first_stride: int = 1):
        super().__init__()
        denoise = check_options(num_classes, in_channels, activation, first_stride, denoise)
        self.activation, self.first_stride = activation, first_stride
        self.normalize = input_normalization(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, stride=first_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.act1 = make_activation(activation, STAGE_WIDTHS[0])
        in_planes = STAGE_WIDTHS[0]
        for stage, (planes, count) in enumerate(zip(STAGE_WIDTHS, BLOCKS_PER_STAGE)):
            blocks = []
            for i in range(count):
                blocks.append(BasicBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1, activation))
                in_planes = planes
            setattr(self, f"layer{stage + 1}", self._make_stage(stage + 1, blocks))
        self._build_head(in_planes, num_classes)
        apply_denoise(self, denoise)

    def _make_stage(self, index: int, blocks: Sequence[nn.Module]) -> nn.Module:
        """The module of stage layer{index} (an nn.Sequential here)."""
        return nn.Sequential(*blocks)

    def _build_head(self, in_planes: int, num_classes: int) -> None:
        self.linear = nn.Linear(in_planes, num_classes)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(self.normalize(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self._stem(x)))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
