"""scikit-learn's handwritten digits (1797 images of 8x8, 10 classes) as torch tensors.

Small enough to train a model in seconds on a CPU: the data set of fastrobust's attack tests
and quick experiments. Needs scikit-learn (the data ship with it; nothing is downloaded).
"""
from __future__ import annotations

from typing import Tuple

import torch

SPLITS = ("train", "test")
TEST_FRACTION = 0.2
# Pixel values of the data set are integers 0..16.
MAX_PIXEL = 16.0


def load_digits(split: str = "train", seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of one split: x float32 (N, 1, 8, 8) in [0, 1], y int64 (N,).

    The split is a seeded random permutation: its last 20 % (359 images) is "test", the rest
    (1438) "train"; the same seed always gives the same split, disjoint between the two.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastrobust.data.load_digits needs scikit-learn (pip install scikit-learn)") from exc
    data = sklearn_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / MAX_PIXEL
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(TEST_FRACTION * len(y)))
    rows = order[-n_test:] if split == "test" else order[:-n_test]
    return x[rows].contiguous(), y[rows].contiguous()
