"""Per-channel input normalisation as the first layer of a model.

Attacks work in pixel space ([0, 1], where eps is defined); the model itself normalises, so
`(x - mean) / std` belongs inside it, not in the data pipeline.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

Values = Union[Sequence[float], torch.Tensor]


def _as_vector(values: Values, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(values, dtype=torch.float32).detach().clone()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from exc
    if t.dim() > 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t.reshape(-1)


class Normalize(nn.Module):
    """y = (x - mean) / std per channel (dim 1) of an (N, C, ...) input.

    `mean` and `std` have one value per channel, or one value for every channel. They are
    buffers (saved with the model, moved by .to()), kept in float32 and cast to x's dtype in
    forward. Elementwise broadcasting keeps x's memory format (channels_last stays so).
    """

    def __init__(self, mean: Values, std: Values):
        super().__init__()
        mean_t, std_t = _as_vector(mean, "mean"), _as_vector(std, "std")
        if mean_t.numel() != std_t.numel():
            raise ValueError(f"mean and std must have the same length, got {mean_t.numel()} and {std_t.numel()}")
        if not (std_t > 0).all():
            raise ValueError(f"std must be > 0 in every channel, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    @property
    def channels(self) -> int:
        return self.mean.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"x must have shape (N, C, ...), got {tuple(x.shape)}")
        if self.channels != 1 and x.shape[1] != self.channels:
            raise ValueError(f"x has {x.shape[1]} channels (shape {tuple(x.shape)}); "
                             f"this Normalize has {self.channels}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.to(x.dtype).view(shape)) / self.std.to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        fmt = lambda t: "(" + ", ".join(f"{v:.4g}" for v in t.tolist()) + ")"  # noqa: E731
        return f"mean={fmt(self.mean)}, std={fmt(self.std)}"
