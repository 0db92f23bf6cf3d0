"""Feature squeezing (Xu et al. 2018, "Feature squeezing: detecting adversarial examples";
survey spec: methods-more.md §1.3): score = the largest L1 distance between the softmax of x
and of a squeezed x, over the squeezers.

Squeezers (the survey's): MNIST (one channel) 1-bit depth and a 2x2 median filter; CIFAR, SVHN
(three channels) 5-bit depth and the 2x2 median (their third squeezer, OpenCV's
non-local-means denoiser on uint8 images, is not reproduced: the package's own non-local means
is the feature-denoising op of Xie et al., another algorithm). "median3" is the package's fused
3x3 median (fastrobust.ops.median3x3), for the 3x3 filter of Xu et al.'s ImageNet setting.

- bit depth b: round(x (2^b - 1)) / (2^b - 1); in the backward pass the identity (BPDA, so that
  detector-aware attacks get a gradient; Athalye et al. 2018).
- 2x2 median: scipy.ndimage.median_filter(size=2) with reflect padding: the window of pixel
  (i, j) is rows i-1, i and columns j-1, j; "reflect" repeats the edge pixel (scipy's mode);
  of the four values the upper median (scipy's rank 2 of 0..3) is taken.
- round_input: inputs rounded to 8-bit before scoring, as the survey does to the adversarial
  examples (reduce_precision(x, 256)); identity backward.

Unsupervised; fitted on nothing but the threshold (threshold_at_fpr on clean validation
images; the survey used a random half of the clean test set). Differentiable with BPDA.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..eval.inference import logits_of
from ..ops import median3x3
from .base import Detector

SQUEEZERS = ("bits1", "bits2", "bits3", "bits4", "bits5", "bits6", "bits7", "bits8", "median2", "median3")


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2 ** bits - 1
    return x + (torch.round(x * levels) / levels - x).detach()


def median2x2(x: torch.Tensor) -> torch.Tensor:
    """scipy.ndimage.median_filter(x, size=2, mode="reflect") per image and channel."""
    padded = F.pad(x, (1, 0, 1, 0), mode="replicate")  # scipy's reflect repeats the edge pixel
    windows = padded.unfold(2, 2, 1).unfold(3, 2, 1).flatten(-2)  # (N, C, H, W, 4)
    return windows.sort(-1).values[..., 2]


def squeeze(x: torch.Tensor, name: str) -> torch.Tensor:
    if name.startswith("bits"):
        return bit_depth(x, int(name[4:]))
    if name == "median2":
        return median2x2(x)
    return median3x3(x)


class FeatureSqueezing(Detector):
    name = "fs"
    supervised = False
    differentiable = True

    def __init__(self, squeezers: Optional[Sequence[str]] = None, round_input: bool = True):
        super().__init__()
        if squeezers is not None:
            if isinstance(squeezers, str) or not squeezers or any(s not in SQUEEZERS for s in squeezers):
                raise ValueError(f"squeezers must be a non-empty list of {', '.join(SQUEEZERS)}, got {squeezers!r}")
            squeezers = tuple(squeezers)
        if not isinstance(round_input, bool):
            raise ValueError(f"round_input must be True or False, got {round_input!r}")
        self.squeezers, self.round_input = squeezers, round_input

    def _fit(self, model, x, y, x_adv, generator) -> None:
        if self.squeezers is None:  # the survey's choice by the number of channels
            self.squeezers = ("bits1", "median2") if x.shape[1] == 1 else ("bits5", "median2")

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        if self.round_input:
            x = bit_depth(x, 8)
        p = torch.softmax(logits_of(self.model(x)), 1)
        dists = [(p - torch.softmax(logits_of(self.model(squeeze(x, s))), 1)).abs().sum(1) for s in self.squeezers]
        return torch.stack(dists, 1).max(1).values
