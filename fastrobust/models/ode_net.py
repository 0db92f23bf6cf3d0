"""The networks of TisODE's MNIST experiments (Yan et al., ICLR 2020; the official
mnist/networks.py): a feature extractor, an ODE block (or a residual block), a classifier."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..nn.normalize import Values
from ..nn.ode import ConcatODEFunc, ODEBlock, TisODEFunc, group_count
from ._checks import input_normalization, positive_int

ODE_KINDS = ("tisode", "vanilla", "none")
DEFAULT_STEPS = {"tisode": 0.05, "vanilla": 0.1}  # the official Euler steps


class ResidualBlock(nn.Module):
    """The CNN baseline's block: z + ReLU(GN(conv3x3(ReLU(GN(conv3x3(z))))))."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.func = TisODEFunc(channels, groups)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.func(None, z)


class ODENet(nn.Module):
    """feature extractor: conv3x3(in -> width, no padding) - GN - ReLU - conv4x4(stride 2,
    padding 1) - GN - ReLU; then `block`; then global average pooling and a linear classifier.

    ode: "tisode" (ODEBlock of TisODEFunc, Euler step 0.05, the steady-state window
    steady_state=(0.9, 1.5) in train mode), "vanilla" (ODEBlock of ConcatODEFunc, the time as a
    channel, step 0.1, no steady-state term), "none" (one residual block: the CNN baseline).
    step, method, t_end: the ODE block's (fastrobust.nn.ODEBlock). width 64 and GroupNorm of 32
    groups as the official net; inputs of any size >= 4x4 (28x28 MNIST, 8x8 digits, 32x32 CIFAR).
    activation, denoise, first_stride: fixed here (ReLU with GroupNorm, none, 1).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 64, ode: str = "tisode",
                 step: Optional[float] = None, method: str = "euler", t_end: float = 1.0,
                 steady_state: Optional[Tuple[float, float]] = (0.9, 1.5),
                 mean: Optional[Values] = None, std: Optional[Values] = None,
                 activation: str = "relu", denoise=None, first_stride: int = 1):
        super().__init__()
        positive_int(in_channels, "in_channels")
        positive_int(num_classes, "num_classes")
        positive_int(width, "width")
        if ode not in ODE_KINDS:
            raise ValueError(f"ode must be one of {', '.join(map(repr, ODE_KINDS))}, got {ode!r}")
        if activation != "relu" or denoise is not None or first_stride != 1:
            raise ValueError("ode_net: activation, denoise and first_stride are fixed (relu with GroupNorm, None, 1); "
                             f"got activation={activation!r}, denoise={denoise!r}, first_stride={first_stride!r}")
        self.ode = ode
        g = group_count(width, 32)
        self.normalize = input_normalization(mean, std, in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3), nn.GroupNorm(g, width), nn.ReLU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.GroupNorm(g, width), nn.ReLU())
        if ode == "none":
            self.block = ResidualBlock(width)
        else:
            func = TisODEFunc(width) if ode == "tisode" else ConcatODEFunc(width)
            self.block = ODEBlock(func, t_end=t_end, method=method,
                                  step=DEFAULT_STEPS[ode] if step is None else step,
                                  steady_state=steady_state if ode == "tisode" else None)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.block(self.features(self.normalize(x)))
        return self.classifier(torch.flatten(self.pool(z), 1))
