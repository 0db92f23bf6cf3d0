"""The interface every detector of fastrobust.detect implements.

    det = FeatureSqueezing().fit(model, x_train, y_train)           # unsupervised: clean data only
    det = KDBU().fit(model, x_train, y_train, x_adv=x_adv_train)      # supervised: adversarial examples too
    det.threshold_at_fpr(x_clean_val, 0.05)                          # the operating point, on validation data
    s = det.score(x)                                                 # (N,), higher = more adversarial
    flagged = det.flag(x)                                            # s > det.threshold

`supervised` detectors need adversarial training examples (x_adv, the attacked versions of
the clean training images, successful ones); `differentiable` ones return scores that keep the
autograd graph to x, so that detector-aware attacks can go through them. Every fitted object
(scalers, kernel densities, SVMs, autoencoders, thresholds) sees only what fit() and
threshold_at_fpr() are given: the protocol (fastrobust.detect.protocol) never gives them test
data. The classifier is used frozen, in eval mode; detectors never change it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .metrics import threshold_at_fpr


class NotFittedError(RuntimeError):
    """score() or flag() before fit() (or flag() before a threshold)."""


class Detector:
    name = "detector"
    supervised = False
    differentiable = False
    # a supervised detector fitted once per attack, on that attack's examples (the survey's
    # KD+BU and LID); False for one fitted on its own training attack (NSS)
    fits_per_attack = False

    def __init__(self) -> None:
        self.model: Optional[nn.Module] = None
        self.threshold: Optional[float] = None

    # -- to implement ------------------------------------------------------------------------
    def _fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: Optional[torch.Tensor],
             generator: torch.Generator) -> None:
        raise NotImplementedError

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- the interface ---------------------------------------------------------------------------
    def fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: Optional[torch.Tensor] = None, *,
            generator: Optional[torch.Generator] = None) -> "Detector":
        """Fits the detector for `model` on clean training images x (labels y) and, for a
        supervised detector, their adversarial versions x_adv (same shape). Returns self."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        _check_images(x, "x")
        if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
            raise ValueError(f"y must be a tensor of {x.shape[0]} labels, got "
                             f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
        if self.supervised:
            if x_adv is None:
                raise ValueError(f"x_adv: {self.name} is a supervised detector; give the adversarial versions of "
                                 "the training images")
            _check_images(x_adv, "x_adv")
            if x_adv.shape != x.shape:
                raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
        elif x_adv is not None:
            raise ValueError(f"x_adv: {self.name} is fitted on clean data only; leave x_adv out")
        self.model = model.eval()
        self.threshold = None
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        self._fit(self.model, x.detach(), y.detach(), None if x_adv is None else x_adv.detach(), g)
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) scores, higher = more adversarial; differentiable in x when self.differentiable."""
        if self.model is None:
            raise NotFittedError(f"{self.name}: call fit() before score()")
        _check_images(x, "x")
        return self._score(x)

    def threshold_at_fpr(self, x_clean: torch.Tensor, fpr: float = 0.05) -> float:
        """Sets and returns the threshold that flags at most a fraction `fpr` of x_clean
        (clean validation images, never test images)."""
        with torch.no_grad():
            scores = self.score(x_clean)
        self.threshold = threshold_at_fpr(scores, fpr)
        return self.threshold

    def flag(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) bool: score > threshold."""
        if self.threshold is None:
            raise NotFittedError(f"{self.name}: set a threshold (threshold_at_fpr) before flag()")
        with torch.no_grad():
            return self.score(x) > self.threshold

    def __repr__(self) -> str:
        state = "fitted" if self.model is not None else "not fitted"
        return f"{type(self).__name__}({state}, threshold={self.threshold})"


def _check_images(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of images (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} holds no images")
