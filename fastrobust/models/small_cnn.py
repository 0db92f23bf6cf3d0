"""A small CNN for quick experiments and tests (sklearn digits at 8x8, MNIST, CIFAR-sized inputs)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..nn.normalize import Values
from ._checks import input_normalization, positive_int

POOLED_SIZE = 4  # adaptive pooling to 4x4 makes the classifier independent of the input size


class SmallCNN(nn.Module):
    """conv3x3(width) - ReLU - conv3x3(2 width) - ReLU - adaptive avg pool 4x4 - linear.

    Inputs (N, in_channels, H, W) in [0, 1], any H, W >= 1; logits (N, num_classes).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 mean: Optional[Values] = None, std: Optional[Values] = None):
        super().__init__()
        positive_int(in_channels, "in_channels")
        positive_int(num_classes, "num_classes")
        positive_int(width, "width")
        self.normalize = input_normalization(mean, std, in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(POOLED_SIZE),
        )
        self.classifier = nn.Linear(2 * width * POOLED_SIZE ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(self.normalize(x)), 1))
