"""The target CNNs of the detection survey (Aldahdooh et al.; spec/methods-more.md §1.2), in
[0, 1] pixel space, with the layers its detectors read named:

SurveyCNNMnist: layer1 = conv32-act, conv32-act, maxpool; layer2 = conv64-act, conv64-act,
maxpool; fc1 = dense256, act1, dropout 0.5; fc2 = dense256 (the official `l_16` is its output
after act2: KD+BU reads fc2's output, before the activation); act2; classifier = dense10.
SurveyCNNCifar: four stages of conv-BN-act blocks (64 x2, 128 x2, 256 x2, 512 x1), each
followed by maxpool and dropout 0.1 .. 0.4; fc1 = dense512 without activation (`l_31`);
classifier = dense10.

Every conv is 3x3 with "same" padding; `activation` is the convs' (the dense layers keep ReLU). image_size (height, width) sizes the first dense layer
(fastrobust.train builds the model with the data set's; 8x8 digits become 2x2 after the two
MNIST pools, 32x32 CIFAR 2x2 after the four CIFAR pools). The official Keras models apply L2
weight decay 5e-4 per conv; the trainer's weight_decay plays that part here.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..nn.normalize import Values
from ._checks import apply_denoise, check_options, input_normalization
from .activations import make_activation

Size = Union[int, Sequence[int]]


def _size(image_size: Size, pools: int, first_stride: int) -> Tuple[int, int]:
    """The feature map's (height, width) after the strided first conv and `pools` 2x2 pools."""
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    hw = tuple((v - 1) // first_stride + 1 for v in hw)  # 3x3 conv, padding 1
    for _ in range(pools):
        hw = (hw[0] // 2, hw[1] // 2)
    if min(hw) < 1:
        raise ValueError(f"image_size {image_size!r} is too small for the first conv (stride {first_stride}) and {pools} 2x2 max-pools")
    return hw


def _conv(cin: int, cout: int, activation: str, bn: bool, stride: int = 1) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(make_activation(activation, cout))
    return nn.Sequential(*layers)


class SurveyCNNMnist(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: Size = 28,
                 mean: Optional[Values] = None, std: Optional[Values] = None, activation: str = "relu",
                 denoise=None, first_stride: int = 1):
        super().__init__()
        denoise = check_options(num_classes, in_channels, activation, first_stride, denoise)
        h, w = _size(image_size, 2, first_stride)
        self.normalize = input_normalization(mean, std, in_channels)
        self.layer1 = nn.Sequential(_conv(in_channels, 32, activation, False, first_stride),
                                    _conv(32, 32, activation, False), nn.MaxPool2d(2))
        self.layer2 = nn.Sequential(_conv(32, 64, activation, False), _conv(64, 64, activation, False),
                                    nn.MaxPool2d(2))
        self.fc1 = nn.Linear(64 * h * w, 256)
        self.act1 = nn.ReLU()  # the dense layers keep the official ReLU (activation: the convs')
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(256, 256)
        self.act2 = nn.ReLU()
        self.classifier = nn.Linear(256, num_classes)
        apply_denoise(self, denoise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.flatten(self.layer2(self.layer1(self.normalize(x))), 1)
        return self.classifier(self.act2(self.fc2(self.dropout(self.act1(self.fc1(out))))))


class SurveyCNNCifar(nn.Module):
    WIDTHS = ((64, 64), (128, 128), (256, 256), (512,))
    DROPOUT = (0.1, 0.2, 0.3, 0.4)

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: Size = 32,
                 mean: Optional[Values] = None, std: Optional[Values] = None, activation: str = "relu",
                 denoise=None, first_stride: int = 1):
        super().__init__()
        denoise = check_options(num_classes, in_channels, activation, first_stride, denoise)
        h, w = _size(image_size, 4, first_stride)
        self.normalize = input_normalization(mean, std, in_channels)
        cin = in_channels
        for i, (widths, p) in enumerate(zip(self.WIDTHS, self.DROPOUT)):
            blocks = []
            for j, cout in enumerate(widths):
                blocks.append(_conv(cin, cout, activation, True, first_stride if i == j == 0 else 1))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks, nn.MaxPool2d(2), nn.Dropout(p)))
        self.fc1 = nn.Linear(512 * h * w, 512)
        self.classifier = nn.Linear(512, num_classes)
        apply_denoise(self, denoise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.normalize(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = stage(out)
        return self.classifier(self.fc1(torch.flatten(out, 1)))

