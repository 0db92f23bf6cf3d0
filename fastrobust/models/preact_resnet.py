"""PreAct ResNet-18 for 32x32 inputs, the CIFAR model of the adversarial-training literature
(He et al. 2016 pre-activation blocks; the variant used by Rice et al. 2020 and Wong et al. 2020)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.normalize import Values
from ._checks import DenoiseSpec, apply_denoise, check_options, input_normalization
from .activations import make_activation

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)


class PreActBlock(nn.Module):
    """BN-act-conv3x3-BN-act-(dropout)-conv3x3 plus a shortcut; a 1x1 shortcut convolution,
    where the shape changes, reads the pre-activated input (as in the paper and in the Wide
    ResNet code, which uses this block with dropout). act1 (in_planes wide) and act2 (planes
    wide) are modules of fastrobust.models.activations (ReLU by default)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = make_activation(activation, in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_activation(activation, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.act2(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + residual


class PreActNetwork(nn.Module):
    """Input normalisation, a 3x3 stem, stages of pre-activation blocks (children layer1,
    layer2, ..., each an nn.Sequential), then BN-act, global average pooling and a linear
    classifier: the shape PreActResNet and WideResNet share."""

    def _build_stem(self, in_channels: int, width: int, first_stride: int, mean: Optional[Values],
                    std: Optional[Values]) -> None:
        """The input normalisation and the stem convolution (stride first_stride)."""
        self.normalize = input_normalization(mean, std, in_channels)
        self.first_stride = first_stride
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=first_stride, padding=1, bias=False)

    def _build_head(self, stages: Sequence[Sequence[nn.Module]], in_planes: int, num_classes: int,
                    activation: str = "relu", denoise: Optional[DenoiseSpec] = None) -> None:
        """Registers the stages (lists of blocks) as layer1, layer2, ..., the head, and then
        the denoising blocks of `denoise` (a check_denoise spec)."""
        self.num_stages = len(stages)
        for i, blocks in enumerate(stages, 1):
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(in_planes)
        self.act = make_activation(activation, in_planes)
        self.linear = nn.Linear(in_planes, num_classes)
        apply_denoise(self, denoise)

    def stages(self) -> List[nn.Module]:
        """layer1, layer2, ... in forward order."""
        return [getattr(self, f"layer{i}") for i in range(1, self.num_stages + 1)]

    @property
    def blocks(self) -> nn.Sequential:
        """Every PreActBlock of the stages, in order (a view for counting and inspection; the
        forward runs the stages, and modules put after a stage are not in this list)."""
        return nn.Sequential(*(m for stage in self.stages() for m in stage.modules() if isinstance(m, PreActBlock)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        for stage in self.stages():
            out = stage(out)
        out = F.adaptive_avg_pool2d(self.act(self.bn(out)), 1)
        return self.linear(torch.flatten(out, 1))


class PreActResNet18(PreActNetwork):
    """Inputs (N, in_channels, H, W) in [0, 1] (32x32 for CIFAR); logits (N, num_classes).
    Stages layer1 .. layer4 (64, 128, 256, 512 channels; Xie et al.'s res2 .. res5).

    activation: one of fastrobust.models.activations.ACTIVATIONS, a module of its own at each
    site. denoise: None or (stages, mode) (or (stages, mode, embed)): DenoisingBlocks after
    those stages (fastrobust.nn.add_denoising_blocks). first_stride: the stride of the stem
    convolution (2 halves every feature map, one of the FGSM-AT tricks). mean/std: a
    Normalize layer first.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 mean: Optional[Values] = None, std: Optional[Values] = None,
                 activation: str = "relu", denoise=None, first_stride: int = 1):
        super().__init__()
        denoise = check_options(num_classes, in_channels, activation, first_stride, denoise)
        self.activation = activation
        self._build_stem(in_channels, STAGE_WIDTHS[0], first_stride, mean, std)
        stages, in_planes = [], STAGE_WIDTHS[0]
        for stage, (planes, count) in enumerate(zip(STAGE_WIDTHS, BLOCKS_PER_STAGE)):
            blocks = []
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(PreActBlock(in_planes, planes, stride, activation=activation))
                in_planes = planes
            stages.append(blocks)
        self._build_head(stages, in_planes, num_classes, activation, denoise)
