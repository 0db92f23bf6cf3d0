"""LID (Ma et al. 2018, "Characterizing adversarial subspaces using local intrinsic
dimensionality"; survey spec: methods-more.md §1.3): the maximum-likelihood LID estimate of
every layer's output against clean activations, combined by logistic regression.

    LID(x) = -k / sum_{i=1..k} log(r_i(x) / r_k(x)),   r_i the i-th smallest distance

Training (as the official code, with its bug fixed): the clean training images in random
minibatches of `batch_size` (100); each minibatch's clean activations are the reference for
its clean images (the image itself, at distance 0, is left out), their noisy copies and their
adversarial versions (nothing left out: the official code always drops the nearest
neighbour, a real neighbour for a noisy or adversarial query). Negatives: clean and noisy;
positives: adversarial. Features min-max scaled with statistics of this training data only
(the official scaler also saw the test set: a leak we remove), then LogisticRegressionCV.

Scoring: against one fixed reference minibatch of clean training images (drawn at fit), so
that the score is a function of x alone and differentiable (distances by cdist, clamped away
from 0); score = the regression's decision function.

layers: the layer outputs to estimate (default: every leaf module in execution order, the
survey's "every layer"; "logits" names the model's output, "penultimate" the input of its last
nn.Linear); k = 20 (MNIST, SVHN) or 30 (CIFAR, Tiny).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from ._fitted import AffineScaler, fit_logistic, noisy_copies
from .base import Detector
from .features import check_layers, logits_and_features

LOGITS = "logits"


def mle_lid(query: torch.Tensor, reference: torch.Tensor, k: int, exclude_self: bool = False) -> torch.Tensor:
    """(N,) LID of each query row from its k nearest reference rows (exclude_self: the query
    is reference row i for query i, which is left out)."""
    d = torch.cdist(query, reference).clamp_min(1e-12)
    if exclude_self:
        d = d.masked_fill(torch.eye(*d.shape, dtype=torch.bool, device=d.device), float("inf"))
    r = torch.topk(d, k, dim=1, largest=False).values
    ratios = torch.log(r / r[:, -1:])
    return -k / ratios.sum(1).clamp_max(-1e-12)


def leaf_layers(model: nn.Module, example: torch.Tensor) -> List[str]:
    """The leaf modules that produce a tensor, in execution order (each once)."""
    order: List[str] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            hooks.append(module.register_forward_hook(
                lambda m, args, out, name=name: order.append(name)
                if isinstance(out, torch.Tensor) and name not in order else None))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return order


class LID(Detector):
    name = "lid"
    supervised = True
    differentiable = True
    fits_per_attack = True

    def __init__(self, k: int = 20, batch_size: int = 100, layers: Optional[Sequence[str]] = None,
                 noise_std: float = 0.125, seed: int = 0):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"k must be an integer >= 2, got {k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= k:
            raise ValueError(f"batch_size must be an integer > k ({k}), got {batch_size!r}")
        if layers is not None and (isinstance(layers, str) or not all(isinstance(l, str) and l for l in layers)):
            raise ValueError(f"layers must be a list of layer names, got {layers!r}")
        if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or noise_std < 0:
            raise ValueError(f"noise_std must be a number >= 0, got {noise_std!r}")
        self.k, self.batch_size, self.noise_std, self.seed = k, batch_size, float(noise_std), int(seed)
        self.layers = None if layers is None else list(layers)

    def _activations(self, x: torch.Tensor) -> List[torch.Tensor]:
        names = [l for l in self.layers if l != LOGITS]
        logits, feats = logits_and_features(self.model, x, names)
        return [logits if l == LOGITS else feats[l] for l in self.layers]

    def _lids(self, query: List[torch.Tensor], reference: List[torch.Tensor], exclude_self: bool) -> torch.Tensor:
        return torch.stack([mle_lid(q, r, self.k, exclude_self) for q, r in zip(query, reference)], 1)

    def _fit(self, model, x, y, x_adv, generator) -> None:
        if len(x) <= self.k:
            raise ValueError(f"x: {self.name} needs more than k={self.k} training images, got {len(x)}")
        if self.layers is None:
            self.layers = leaf_layers(model, x)
        check_layers(model, [l for l in self.layers if l != LOGITS])
        noisy = noisy_copies(x, self.noise_std, generator)
        perm = torch.randperm(len(x), generator=generator, device=generator.device).to(x.device)
        feats, labels = [], []
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                rows = perm[i:i + self.batch_size]
                if len(rows) <= self.k:
                    continue  # a last minibatch too small for k neighbours
                ref = self._activations(x[rows])
                feats += [self._lids(ref, ref, True), self._lids(self._activations(noisy[rows]), ref, False),
                          self._lids(self._activations(x_adv[rows]), ref, False)]
                labels += [torch.zeros(len(rows)), torch.zeros(len(rows)), torch.ones(len(rows))]
            self.reference = [a.detach() for a in self._activations(x[perm[:self.batch_size]])]
        feats = torch.cat(feats).double()
        self.scaler = AffineScaler(feats, "minmax")
        self.decision = fit_logistic(self.scaler(feats), torch.cat(labels), self.seed)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        lids = self._lids(self._activations(x), [r.to(x.device) for r in self.reference], False)
        return self.decision(self.scaler(lids.double())).to(x.dtype)
