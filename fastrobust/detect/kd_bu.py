"""KD+BU (Feinman et al. 2017, "Detecting adversarial samples from artifacts"; survey spec:
methods-more.md §1.3): kernel density of the last hidden layer's features under the predicted
class, and Bayesian uncertainty from MC dropout, combined by logistic regression.

- KD: one Gaussian KDE per class on the training features of that class (the survey's sklearn
  KernelDensity, bandwidth 1.20 for MNIST, 0.26 CIFAR), read at the predicted class:
  log p(h) = logsumexp_i(-|h - h_i|^2 / (2 bw^2)) - log n - d/2 log(2 pi bw^2), in torch
  (differentiable; equal to KernelDensity.score_samples).
- BU: `passes` forward passes with the classifier's dropout layers active and everything else
  in eval mode (BatchNorm keeps its running statistics: the survey's Keras learning phase also
  switched BatchNorm to batch statistics, an artefact we do not copy); BU = the mean over
  classes of the variance of the softmax across passes. The dropout masks come from a fixed
  seed, so a score is a deterministic function of x (EOT attacks redraw them).
- Training: the training images are split in two halves: the class densities are fitted on one
  (the official code fits them on the whole training set and the regression on test data),
  the regression on the other, so that no image is scored by a density that holds its own
  features. Negatives are the clean images and their noisy copies (x + N(0, s^2),
  clipped; the survey's STDEVS table, noise_std), positives their adversarial versions. The
  two scores are z-scored with statistics of this training data only (the official scaler also
  saw the test set: a leak we remove), then LogisticRegressionCV; score = its decision function
  (the official threshold 0.5 on the probability is decision 0; we threshold at a common FPR).

layer: the features KD reads (default: the input of the last nn.Linear; the survey reads the
last hidden dense layer before its activation: "fc2" of survey_cnn_mnist, "fc1" of
survey_cnn_cifar). bu=False: KD alone (models without dropout).
"""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import nn

from ._fitted import AffineScaler, fit_logistic, noisy_copies
from .base import Detector
from .features import PENULTIMATE, batched_features, check_layers, logits_and_features


def kde_log_density(h: torch.Tensor, points: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """(N,) log density of the Gaussian KDE on `points` (n, d) at h (N, d)."""
    d2 = torch.cdist(h, points).pow(2)
    n, d = points.shape
    return (torch.logsumexp(-d2 / (2 * bandwidth ** 2), dim=1) - math.log(n)
            - 0.5 * d * math.log(2 * math.pi * bandwidth ** 2))


def bayesian_uncertainty(model: nn.Module, x: torch.Tensor, passes: int, seed: int) -> torch.Tensor:
    """(N,) mean over classes of the softmax variance across `passes` MC-dropout passes."""
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not dropouts:
        raise ValueError("bu: the classifier has no dropout layer for MC dropout; use bu=False (KD alone)")
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for m in dropouts:
            m.train()
        try:
            probs = torch.stack([torch.softmax(logits_and_features(model, x, [])[0], 1) for _ in range(passes)])
        finally:
            for m in dropouts:
                m.eval()
    return probs.var(0, unbiased=False).mean(1)


class KDBU(Detector):
    name = "kd_bu"
    supervised = True
    differentiable = True
    fits_per_attack = True

    def __init__(self, bandwidth: float = 1.20, layer: str = PENULTIMATE, bu: bool = True, passes: int = 50,
                 noise_std: float = 0.125, seed: int = 0):
        super().__init__()
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not bandwidth > 0:
            raise ValueError(f"bandwidth must be a positive number, got {bandwidth!r}")
        if not isinstance(layer, str) or not layer:
            raise ValueError(f"layer must be a layer name, got {layer!r}")
        if not isinstance(bu, bool):
            raise ValueError(f"bu must be True or False, got {bu!r}")
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 2:
            raise ValueError(f"passes must be an integer >= 2, got {passes!r}")
        if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or noise_std < 0:
            raise ValueError(f"noise_std must be a number >= 0, got {noise_std!r}")
        self.bandwidth, self.layer, self.bu, self.passes = float(bandwidth), layer, bu, passes
        self.noise_std, self.seed = float(noise_std), int(seed)
        self.class_points: Dict[int, torch.Tensor] = {}

    def raw_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1 or 2): [KD, BU] before scaling; differentiable."""
        logits, feats = logits_and_features(self.model, x, [self.layer])
        h = feats[self.layer]
        pred = logits.argmax(1)
        kd = torch.zeros(x.shape[0], dtype=h.dtype, device=h.device)
        for c, points in self.class_points.items():
            rows = (pred == c).nonzero()[:, 0]
            if rows.numel():
                kd = kd.index_put((rows,), kde_log_density(h[rows], points.to(h), self.bandwidth))
        if not self.bu:
            return kd[:, None]
        return torch.stack([kd, bayesian_uncertainty(self.model, x, self.passes, self.seed).to(kd)], 1)

    def _fit(self, model, x, y, x_adv, generator) -> None:
        check_layers(model, [self.layer])
        if len(x) < 4:
            raise ValueError(f"x: {self.name} needs at least 4 training images, got {len(x)}")
        perm = torch.randperm(len(x), generator=generator, device=generator.device).to(x.device)
        density_rows, lr_rows = perm[:len(x) // 2], perm[len(x) // 2:]
        _, feats = batched_features(model, x[density_rows], [self.layer])
        h, yd = feats[self.layer], y[density_rows]
        self.class_points = {int(c): h[yd == c] for c in torch.unique(yd)}
        x, x_adv = x[lr_rows], x_adv[lr_rows]
        noisy = noisy_copies(x, self.noise_std, generator)
        with torch.no_grad():
            raw = torch.cat([self._batched_raw(v) for v in (x, noisy, x_adv)])
        labels = torch.cat([torch.zeros(2 * len(x)), torch.ones(len(x_adv))])
        self.scaler = AffineScaler(raw, "standard")
        self.decision = fit_logistic(self.scaler(raw.double()), labels, self.seed)

    def _batched_raw(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return torch.cat([self.raw_scores(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.raw_scores(x)
        return self.decision(self.scaler(raw.double())).to(x.dtype)
