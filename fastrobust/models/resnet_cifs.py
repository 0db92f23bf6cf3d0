"""CIFAR ResNet-18 with CIFS in layer4, as in the official CIFS code (Yan et al., ICML 2021,
models/nets/resnet_CIFS.py): a CIFS layer on the post-ReLU output of both BasicBlocks of layer4,
block 1 with an mlp probe (hidden 128, Softplus beta 5), block 2 with a linear probe."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.cifs import CIFS
from ..nn.normalize import Values
from ._checks import input_normalization, positive_int
from .preact_resnet import BLOCKS_PER_STAGE, STAGE_WIDTHS  # the CIFAR ResNet-18 layout

# Probe of the CIFS layer after each block of layer4; CIFS's defaults (hidden 128, beta 5) are
# the official mlp probe.
LAYER4_PROBES = ("mlp", "linear")


class BasicBlock(nn.Module):
    """relu(BN(conv3x3(relu(BN(conv3x3(x))))) + shortcut(x)), the shortcut a 1x1 convolution
    with BN where the shape changes (He et al. 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18CIFS(nn.Module):
    """Inputs (N, in_channels, H, W) in [0, 1] (32x32 for CIFAR; pass mean/std to normalise
    inside the model). forward(x, labels=None) returns (logits, [probe_logits_1, probe_logits_2]),
    each (N, num_classes); labels (int64 (N,)) are required in train mode and ignored in eval
    mode (see fastrobust.nn.CIFS). Train with fastrobust.nn.cifs_loss; attack through
    fastrobust.models.CIFSLogits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 mean: Optional[Values] = None, std: Optional[Values] = None):
        super().__init__()
        positive_int(num_classes, "num_classes")
        positive_int(in_channels, "in_channels")
        self.normalize = input_normalization(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        stages, in_planes = [], STAGE_WIDTHS[0]
        for stage, (planes, count) in enumerate(zip(STAGE_WIDTHS, BLOCKS_PER_STAGE)):
            blocks = []
            for i in range(count):
                blocks.append(BasicBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1))
                in_planes = planes
            stages.append(blocks)
        self.layer1, self.layer2, self.layer3 = (nn.Sequential(*blocks) for blocks in stages[:3])
        # layer4's blocks are called one by one: each output goes through its CIFS layer.
        self.layer4 = nn.ModuleList(stages[3])
        self.cifs = nn.ModuleList(CIFS(in_planes, num_classes, probe=probe) for probe in LAYER4_PROBES)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        probe_logits = []
        for block, cifs in zip(self.layer4, self.cifs):
            out, logits = cifs(block(out), labels)
            probe_logits.append(logits)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out), probe_logits
