"""Fitted sklearn models applied to torch tensors, differentiably: the scalers and the linear
decision functions of the supervised detectors (KD+BU, LID). sklearn fits (it is the
well-kept tool for LogisticRegressionCV); scoring is torch, on the features' device, so that a
detector-aware attack can take gradients through it."""
from __future__ import annotations

import numpy as np
import torch


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


class AffineScaler:
    """z = (f - shift) / scale per column, fitted on training features only: mode "standard"
    (mean / std, sklearn's StandardScaler) or "minmax" (to [0, 1], MinMaxScaler)."""

    def __init__(self, features: torch.Tensor, mode: str):
        f = features.detach().double()
        if mode == "standard":
            shift, scale = f.mean(0), f.std(0, unbiased=False)
        elif mode == "minmax":
            shift, scale = f.min(0).values, f.max(0).values - f.min(0).values
        else:
            raise ValueError(f"mode must be 'standard' or 'minmax', got {mode!r}")
        self.shift = shift
        self.scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant columns: as sklearn

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.shift.to(f)) / self.scale.to(f)


class LinearDecision:
    """A fitted sklearn linear classifier's decision function w . z + b as a torch function
    (positive: the adversarial class, label 1)."""

    def __init__(self, classifier):
        self.classifier = classifier  # the fitted sklearn model (its decision_function is the oracle)
        self.w = torch.as_tensor(classifier.coef_[0], dtype=torch.float64)
        self.b = float(classifier.intercept_[0])

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w.to(z) + self.b


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, seed: int) -> LinearDecision:
    """LogisticRegressionCV(max_iter=1000) on (features, labels): the survey's classifier for KD+BU
    and LID."""
    import warnings

    from sklearn.linear_model import LogisticRegressionCV

    labels = to_numpy(labels).astype(int)
    if len(set(labels.tolist())) != 2:
        raise ValueError("the detector needs both clean and adversarial training examples")
    with warnings.catch_warnings():
        # sklearn >= 1.9 announces changes of LogisticRegressionCV's defaults (l1_ratios) and
        # fitted attributes; the L2 fit and coef_ / intercept_, all that is used here, keep
        # their meaning
        warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
        clf = LogisticRegressionCV(max_iter=1000, scoring="accuracy", random_state=seed).fit(
            to_numpy(features), labels)
    return LinearDecision(clf)


def noisy_copies(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """x + N(0, std^2), clipped to [0, 1]: the survey's extra negatives for KD+BU and LID."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    return (x + std * noise).clamp(0.0, 1.0)
