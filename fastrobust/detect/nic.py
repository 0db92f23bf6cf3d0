"""NIC, network invariant checking (Ma et al., NDSS 2019), as the survey implements it, with its
bugs fixed (spec: /work/shared/spec/methods-more.md §1.3 "NIC", §1.7; official code:
`detect_nic.py` of aldahdooh/detectors_review).

Per layer l of the classifier, on clean training images:
- value invariant: the layer's flattened output (PCA-reduced to pca_dims when wider, PCA fitted
  on the training activations) modelled by a OneClassSVM(nu=0.01, RBF). The official code calls
  this model `pi`; the paper calls it the value invariant.
- provenance invariant, per consecutive pair (l, l+1): a linear probe per layer maps the
  (reduced) output to class probabilities; a OneClassSVM(nu=0.1, gamma="scale") models the
  concatenated probabilities of l and l+1 (the official `vi`).
A final OneClassSVM(nu=0.1, gamma="scale") models the vector of all per-layer decision values;
score(x) = minus its decision function (higher = more adversarial).

Default layers: the leaf modules of the classifier (modules without submodules) whose output is
a tensor, in the order they first run on a training image; nn.Identity and dropout modules are
left out (in eval mode they repeat their input). The official code takes every Keras layer
after the input (conv, activation, pool, dropout, flatten, dense, softmax). A module that runs
more than once contributes its last output. Any named submodule, or "penultimate", may be given.

Deviations from the official code:
- The provenance probes are trained: one multinomial logistic regression per layer (standardised
  inputs, sklearn LogisticRegression) on the training labels. The official Dense(10) + softmax
  probes are never trained and are drawn afresh at every call, so clean and adversarial images
  were projected by different random maps.
- The value SVMs' gamma is an option, default "scale" (1 / (features x variance)). The official
  gamma = 1 on unscaled activations makes every kernel value between two images of a wide
  layer about exp(-|a - b|^2) ~ 0: each training image is its own support vector and the
  decision function is nearly constant away from them (on the digits SmallCNN: all training
  images are support vectors and the test decision values of a conv layer have standard
  deviation 0). gamma=1.0 gives the official setting.
- The training images are split: the per-layer models are fitted on one part, the final SVM on
  the disjoint rest (final_fraction of them, default 0.2), so that the final SVM sees per-layer
  decision values of images those models were not fitted on, as at test time. The official
  code fits the per-layer models on all training images, the final SVM on a random 80 % of
  them, and evaluates on the other 20 % of the training images as "normal" (the protocol here
  takes clean test images instead).
- At most max_train training images (a random subset drawn from fit()'s generator) are used,
  to bound the cost of the SVMs.
- differentiable = False: the scores go through PCA, libsvm and sklearn on NumPy arrays, so
  they carry no autograd graph (attack them with BPDA or a surrogate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM
from torch import nn

from ._options import integer, layer_names
from .base import Detector
from .features import batched_features, check_layers

VALUE_NU = 0.01       # official per-layer (value) OneClassSVM
PROVENANCE_NU = 0.1   # official consecutive-pair (provenance) OneClassSVM
FINAL_NU = 0.1        # official final OneClassSVM
PROBE_MAX_ITER = 500  # lbfgs iterations of each logistic-regression probe
SKIPPED_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
GAMMA_NAMES = ("scale", "auto")


@dataclass
class LayerModel:
    """One layer's fitted models: optional PCA, value OneClassSVM and probe."""
    pca: Optional[PCA]
    value_svm: OneClassSVM
    probe: Pipeline

    def reduce(self, features: np.ndarray) -> np.ndarray:
        """The layer's flattened output as the SVM and the probe see it (PCA'd when wide)."""
        return features if self.pca is None else self.pca.transform(features)

    def value(self, reduced: np.ndarray) -> np.ndarray:
        return self.value_svm.decision_function(reduced)

    def probabilities(self, reduced: np.ndarray) -> np.ndarray:
        return self.probe.predict_proba(reduced)


class NIC(Detector):
    """Network invariant checking (unsupervised, not differentiable).

    layers: names of the classifier's submodules (or "penultimate"); None = the default rule
    of the module docstring; pca_dims: layers wider than this are PCA-reduced to it (official
    5000); gamma: RBF gamma of the value SVMs, "scale", "auto" or a number > 0 (official 1.0);
    max_train: at most this many training images are used; final_fraction: the share of them
    kept for the final SVM (the per-layer models are fitted on the rest); batch_size: images per
    forward pass when reading the layers.
    """
    name = "nic"
    supervised = False
    differentiable = False

    def __init__(self, layers: Optional[Sequence[str]] = None, pca_dims: int = 5000, gamma="scale",
                 max_train: int = 2000, final_fraction: float = 0.2, batch_size: int = 256):
        super().__init__()
        self.layers = layer_names(layers)
        self.pca_dims = integer(pca_dims, "pca_dims")
        self.gamma = _check_gamma(gamma)
        self.max_train = integer(max_train, "max_train")
        if max_train < 4:
            raise ValueError(f"max_train must be at least 4 (two images for each part of the split), got {max_train}")
        if (isinstance(final_fraction, bool) or not isinstance(final_fraction, (int, float))
                or not 0.0 < final_fraction < 1.0):
            raise ValueError(f"final_fraction must be a number in (0, 1), got {final_fraction!r}")
        self.final_fraction = float(final_fraction)
        self.batch_size = integer(batch_size, "batch_size")
        self.layers_: List[str] = []
        self.layer_models_: List[LayerModel] = []
        self.provenance_svms_: List[OneClassSVM] = []
        self.final_svm_: Optional[OneClassSVM] = None
        self.layer_rows_: Optional[torch.Tensor] = None  # rows of fit()'s x the per-layer models saw
        self.final_rows_: Optional[torch.Tensor] = None  # rows of fit()'s x the final SVM saw

    def _fit(self, model, x, y, x_adv, generator) -> None:
        self.layers_ = list(self.layers) if self.layers is not None else default_layers(model, x[:1])
        check_layers(model, self.layers_)
        layer_rows, final_rows = self._split(x.shape[0], generator)
        y_layer = y[layer_rows].cpu().numpy()
        if np.unique(y_layer).size < 2:
            raise ValueError("y: NIC's probes need at least two classes among the training images")
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator, device=generator.device))
        self.layer_models_, layer_probs, final_values, final_probs = [], [], [], []
        rows = torch.cat([layer_rows, final_rows])
        for layer in self.layers_:
            features = self._features(model, x[rows.to(x.device)], [layer])[layer]
            fit_part, final_part = features[:len(layer_rows)], features[len(layer_rows):]
            layer_model = self._fit_layer(fit_part, y_layer, seed)
            self.layer_models_.append(layer_model)
            reduced_fit, reduced_final = layer_model.reduce(fit_part), layer_model.reduce(final_part)
            layer_probs.append(layer_model.probabilities(reduced_fit))
            final_values.append(layer_model.value(reduced_final))
            final_probs.append(layer_model.probabilities(reduced_final))
        self.provenance_svms_ = [OneClassSVM(nu=PROVENANCE_NU, kernel="rbf", gamma="scale").fit(pair)
                                 for pair in _consecutive_pairs(layer_probs)]
        self.final_svm_ = OneClassSVM(nu=FINAL_NU, kernel="rbf", gamma="scale").fit(
            self._invariants(final_values, final_probs))
        self.layer_rows_, self.final_rows_ = layer_rows.sort().values, final_rows.sort().values

    def _split(self, n: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """(per-layer rows, final rows): disjoint random rows of at most max_train images, so
        that the final SVM sees decision values of images the per-layer models did not see."""
        if n < 4:
            raise ValueError(f"x: NIC needs at least 4 training images (two per part of the split), got {n}")
        rows = torch.randperm(n, generator=generator, device=generator.device).cpu()[:self.max_train]
        n_final = min(max(round(self.final_fraction * len(rows)), 2), len(rows) - 2)
        return rows[n_final:], rows[:n_final]

    def _fit_layer(self, features: np.ndarray, y: np.ndarray, seed: int) -> LayerModel:
        """PCA (when the layer is wider than pca_dims), the value SVM and the trained probe."""
        pca = None
        if features.shape[1] > self.pca_dims:
            pca = PCA(n_components=min(self.pca_dims, features.shape[0]), random_state=seed).fit(features)
            features = pca.transform(features)
        value_svm = OneClassSVM(nu=VALUE_NU, kernel="rbf", gamma=self.gamma).fit(features)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER)).fit(features, y)
        return LayerModel(pca, value_svm, probe)

    def _features(self, model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> Dict[str, np.ndarray]:
        """{layer: (N, d) float64 array} of the classifier's layer outputs, without gradients."""
        _, features = batched_features(model, x, layers, self.batch_size)
        return {layer: f.detach().cpu().double().numpy() for layer, f in features.items()}

    def _invariants(self, values: List[np.ndarray], probs: List[np.ndarray]) -> np.ndarray:
        """(N, 2L - 1): the value SVMs' and the provenance SVMs' decision values."""
        pairs = _consecutive_pairs(probs)
        provenance = [svm.decision_function(pair) for svm, pair in zip(self.provenance_svms_, pairs)]
        return np.stack(values + provenance, axis=1)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        scores = []
        for i in range(0, x.shape[0], self.batch_size):
            features = self._features(self.model, x[i:i + self.batch_size], self.layers_)
            values, probs = [], []
            for layer, layer_model in zip(self.layers_, self.layer_models_):
                reduced = layer_model.reduce(features[layer])
                values.append(layer_model.value(reduced))
                probs.append(layer_model.probabilities(reduced))
            scores.append(-self.final_svm_.decision_function(self._invariants(values, probs)))
        return torch.as_tensor(np.concatenate(scores), dtype=x.dtype, device=x.device)


def default_layers(model: nn.Module, x: torch.Tensor) -> List[str]:
    """The leaf modules whose output is a tensor, in the order they first run on x (the
    official code takes every Keras layer); identity and dropout modules are skipped: in eval
    mode they only repeat their input."""
    order: List[str] = []

    def record(name: str):
        def hook(module, args, out):
            if isinstance(out, torch.Tensor) and name not in order:
                order.append(name)
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules()
               if name and not any(True for _ in module.children()) and not isinstance(module, SKIPPED_MODULES)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise ValueError("layers: the classifier has no leaf module with a tensor output; name the layers")
    return order


def _consecutive_pairs(arrays: List[np.ndarray]) -> List[np.ndarray]:
    """[concat(a_l, a_l+1)] for consecutive layers l: the provenance SVMs' inputs."""
    return [np.concatenate([a, b], axis=1) for a, b in zip(arrays[:-1], arrays[1:])]




def _check_gamma(gamma):
    if isinstance(gamma, str):
        if gamma not in GAMMA_NAMES:
            raise ValueError(f"gamma must be one of {GAMMA_NAMES} or a number > 0, got {gamma!r}")
        return gamma
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < float("inf"):
        raise ValueError(f"gamma must be one of {GAMMA_NAMES} or a finite number > 0, got {gamma!r}")
    return float(gamma)
