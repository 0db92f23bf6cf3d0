"""A small CNN for quick experiments and tests (sklearn digits at 8x8, MNIST, CIFAR-sized inputs)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..nn.normalize import Values
from ._checks import apply_denoise, check_options, input_normalization, positive_int
from .activations import make_activation

POOLED_SIZE = 4  # adaptive pooling to 4x4 makes the classifier independent of the input size
# state_dict keys of the SmallCNN before its stages were named (features = Sequential(conv,
# ReLU, conv, ReLU, pool)); such a state_dict still loads.
_OLD_KEYS = {"features.0.": "layer1.0.", "features.2.": "layer2.0."}


class _StageView(nn.Sequential):
    """model.features: layer1, layer2 and the pooling as one Sequential that registers nothing
    in the model; its `training` is that of its modules (True only if all are training)."""

    @property
    def training(self) -> bool:
        return all(m.training for m in self)

    @training.setter
    def training(self, mode: bool) -> None:
        pass  # nn.Module.train sets the modules themselves


class SmallCNN(nn.Module):
    """layer1 = conv3x3(width, stride first_stride) - act, layer2 = conv3x3(2 width) - act,
    adaptive avg pool 4x4 (`pool`), linear (`classifier`).

    Inputs (N, in_channels, H, W) in [0, 1], any H, W >= 1 (8x8 for sklearn digits); logits
    (N, num_classes). activation, denoise (stages "layer1", "layer2"), first_stride, mean and
    std as in PreActResNet18. State dicts of the older layout (features.0, features.2) load.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 mean: Optional[Values] = None, std: Optional[Values] = None,
                 activation: str = "relu", denoise=None, first_stride: int = 1):
        super().__init__()
        denoise = check_options(num_classes, in_channels, activation, first_stride, denoise)
        positive_int(width, "width")
        self.activation, self.first_stride = activation, first_stride
        self.normalize = input_normalization(mean, std, in_channels)
        self.layer1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=first_stride, padding=1),
                                    make_activation(activation, width))
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), make_activation(activation, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(POOLED_SIZE)
        self.classifier = nn.Linear(2 * width * POOLED_SIZE ** 2, num_classes)
        apply_denoise(self, denoise)
        self._register_load_state_dict_pre_hook(_rename_old_keys)

    @property
    def features(self) -> nn.Sequential:
        """layer1, layer2 and pool as one module (the older layout's `features`); a view:
        model.features.eval() puts those modules in eval mode."""
        return _StageView(self.layer1, self.layer2, self.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.layer2(self.layer1(self.normalize(x))))
        return self.classifier(torch.flatten(out, 1))


def _rename_old_keys(state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for old, new in _OLD_KEYS.items():
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
