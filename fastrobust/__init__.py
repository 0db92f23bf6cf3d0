"""fastrobust: fast, correct building blocks for adversarial robustness in PyTorch.

Fused CPU/CUDA kernels for robust layers (Sparta activation, ...) behind a thin Python API,
with a pure-PyTorch reference of every op (fastrobust.reference); adversarial attacks on a
fused PGD engine (fastrobust.attacks).
"""
from ._extension import EXT_ERROR, HAS_EMU, HAS_EXT, WITH_CUDA
from . import attacks, data, models, nn, ops, reference
from .ops import sparta

__version__ = "0.1.0"

__all__ = ["HAS_EXT", "HAS_EMU", "WITH_CUDA", "EXT_ERROR", "attacks", "data", "models", "nn", "ops", "reference", "sparta"]
