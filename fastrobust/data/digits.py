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
NUM_CLASSES = 10
INPUT_SHAPE = (1, 8, 8)
# Pixel mean and standard deviation of all 1797 images after scaling to [0, 1].
MEAN = (0.3053,)
STD = (0.3760,)


def _test_counts(class_sizes: torch.Tensor, fraction: float) -> torch.Tensor:
    """Test images per class: fraction * size rounded so that the total is round(fraction * N)
    (largest remainder; ties go to the lower class). Each count is within 1 of fraction * size."""
    exact = class_sizes.double() * fraction
    counts = exact.floor().long()
    missing = int(round(fraction * int(class_sizes.sum()))) - int(counts.sum())
    if missing > 0:
        remainder = exact - counts
        # stable sort: equal remainders keep class order
        order = torch.sort(-remainder, stable=True).indices
        counts[order[:missing]] += 1
    return counts


def load_digits(split: str = "train", seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of one split: x float32 (N, 1, 8, 8) in [0, 1], y int64 (N,).

    The split is stratified: a seeded random permutation of all images is drawn, and within each
    class its last round(20 %) images (within one image of 20 % of that class, 359 in all) are
    "test", the rest (1438) "train". Every class is in both splits, the splits are disjoint, the
    same seed always gives the same split, and each split is returned in the permutation's
    (shuffled) order.
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
    y_ordered = y[order]
    n_test = _test_counts(torch.bincount(y, minlength=NUM_CLASSES), TEST_FRACTION)
    # rank of each permuted image among the permuted images of its class: 0, 1, 2, ...
    one_hot = torch.nn.functional.one_hot(y_ordered, NUM_CLASSES)
    rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1
    class_size = torch.bincount(y, minlength=NUM_CLASSES)[y_ordered]
    is_test = rank >= class_size - n_test[y_ordered]
    rows = order[is_test] if split == "test" else order[~is_test]
    return x[rows].contiguous(), y[rows].contiguous()
