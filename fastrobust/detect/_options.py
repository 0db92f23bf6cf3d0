"""The option checks every detector's constructor shares: ValueErrors that name the option."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple


def integer(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def number(value, name: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
           high_open: bool = False) -> float:
    """A finite real between low and high (closed ends unless *_open), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {bounds}, got {value!r}")
    return float(value)


def positive(value, name: str) -> float:
    """A finite number > 0."""
    return number(value, name, 0.0, low_open=True)


def layer_names(layers: Optional[Sequence[str]]) -> Optional[Tuple[str, ...]]:
    """None (the detector's default layers) or distinct, non-empty layer names."""
    if layers is None:
        return None
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"layers must be None or a non-empty list of layer names, got {layers!r}")
    if not all(isinstance(layer, str) and layer for layer in layers):
        raise ValueError(f"layers must hold non-empty strings, got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must name each layer once, got {list(layers)}")
    return tuple(layers)
