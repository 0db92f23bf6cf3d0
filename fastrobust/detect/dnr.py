"""DNR, deep neural rejection (Sotgiu et al. 2020) as the survey runs it (spec:
/work/shared/spec/methods-more.md §1.3 "DNR", §1.2, §1.7; official code: `detect_dnr.py` and
`dnr/dnr_mnist.py` of aldahdooh/detectors_review).

Three RBF SVMs classify the flattened activations of three layers of the classifier; a combiner
RBF SVM classifies their concatenated class probabilities. An image is rejected when the
combiner's largest class probability is small: score = -max_c p_combiner(c | x), and the
paper's rule "reject if max probability <= t" is `score >= -t`.

The fitted SVMs are evaluated in torch (kernel values against the support vectors, libsvm's
Platt sigmoids, pairwise coupling), so the score keeps the autograd graph to x
(differentiable = True) and detector-aware attacks can go through it.

Deviations from the official code:
- Disjoint training rows: the training images (at most max_train, drawn with fit()'s
  generator) are split in two random halves, `layer_rows` for the layer SVMs and
  `combiner_rows` for the combiner, so that the combiner is trained on out-of-sample
  probabilities; the official code trains everything on the full training set.
- Threshold: the official t is the 10th percentile of the score on the clean *test* set
  (in-sample, FPR 10 % by construction, §1.7); here the operating point comes from
  threshold_at_fpr on clean validation images (threshold_at_fpr(x_val, 0.10) for the
  official FPR).
- Probabilities: sklearn 1.9 deprecates SVC(probability=True) (removed in 1.11), so the SVCs are
  fitted without it and their probability model is fitted here the way libsvm fits it: a
  Platt sigmoid per class pair (platt_fit, libsvm's algorithm) on out-of-fold decision values
  of 5 folds; our folds are stratified over all classes and drawn with fit()'s generator,
  libsvm draws 5 folds per class pair with its own seed. The class probabilities are the exact
  solution of libsvm's pairwise coupling problem (couple; libsvm stops its iterative solver at
  tolerance 0.005 / k, which moves its probabilities by about 1e-3).
- Default layers (the official MNIST layers are `l_10`, the last pool, `l_14`, dense-1 after
  dropout, and `l_16`, dense-2 after ReLU, the penultimate): see default_layers. On
  fastrobust.models.SurveyCNNMnist the rule gives exactly these (layer2, dropout,
  penultimate); on SurveyCNNCifar it gives layer3, layer4 (after pool and dropout) and the
  penultimate (dense-512), where the official reads the BatchNorm outputs inside the last two
  conv stages.
- gamma: sklearn's "scale" (1 / (d * Var(X)), the default of the official SVCs), computed
  from the training features and passed to SVC as a number.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..eval.inference import logits_of
from ._options import integer, layer_names, positive
from .base import Detector
from .features import PENULTIMATE, batched_features, check_layers, last_linear, logits_and_features

MIN_PROB = 1e-7  # libsvm clips the pairwise probabilities to [MIN_PROB, 1 - MIN_PROB]
FOLDS = 5  # libsvm's cross-validation folds for the Platt sigmoids


class TorchRBFSVC:
    """A fitted sklearn SVC(kernel="rbf") evaluated in torch (float64), with libsvm's
    probability model: `decision` gives libsvm's one-vs-one decision values (positive = the
    pair's first class; sklearn's decision_function has the opposite sign for two classes),
    `proba` the class probabilities (in svc.classes_ order) once prob_a and prob_b (the Platt
    sigmoid of each pair) are set. Both keep the autograd graph to their input."""

    def __init__(self, svc, gamma: float, device: torch.device):
        self.svc = svc
        self.gamma = gamma
        k = len(svc.classes_)
        self.pairs = torch.tensor([(i, j) for i in range(k) for j in range(i + 1, k)], device=device).view(-1, 2)
        self.support = torch.as_tensor(svc.support_vectors_, dtype=torch.float64, device=device)
        self.coef, self.intercept = self._pair_coefficients(svc, device)
        self.prob_a: Optional[torch.Tensor] = None
        self.prob_b: Optional[torch.Tensor] = None

    def _pair_coefficients(self, svc, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(support vectors, pairs) weights and (pairs,) intercepts of the decision values:
        the pair (i, j) weighs class i's support vectors by dual_coef_[j - 1] and class j's by
        dual_coef_[i] (sklearn's layout of libsvm's coefficients)."""
        dual = torch.as_tensor(svc.dual_coef_, dtype=torch.float64)
        bounds = torch.cat([torch.zeros(1, dtype=torch.long), torch.as_tensor(svc.n_support_).long().cumsum(0)])
        coef = torch.zeros(dual.shape[1], self.pairs.shape[0], dtype=torch.float64)
        for p, (i, j) in enumerate(self.pairs.tolist()):
            coef[bounds[i]:bounds[i + 1], p] = dual[j - 1, bounds[i]:bounds[i + 1]]
            coef[bounds[j]:bounds[j + 1], p] = dual[i, bounds[j]:bounds[j + 1]]
        intercept = torch.as_tensor(svc.intercept_, dtype=torch.float64)
        if len(svc.classes_) == 2:  # sklearn flips the binary coefficients; libsvm's (and ours) are unflipped
            coef, intercept = -coef, -intercept
        return coef.to(device), intercept.to(device)

    def decision(self, z: torch.Tensor) -> torch.Tensor:
        """(N, pairs) one-vs-one decision values sum_sv coef exp(-gamma |z - sv|^2) + b."""
        z = z.to(device=self.support.device, dtype=torch.float64)
        sq = (z * z).sum(1, keepdim=True) + (self.support * self.support).sum(1) - 2 * z @ self.support.T
        return torch.exp(-self.gamma * sq.clamp_min(0)) @ self.coef + self.intercept

    def proba(self, z: torch.Tensor) -> torch.Tensor:
        """(N, k) class probabilities: the Platt sigmoid of each pair's decision value, then
        pairwise coupling solved exactly (the bordered system [Q 1; 1' 0] [p; b] = [0; 1])."""
        dec = self.decision(z)
        return couple(torch.sigmoid(-(dec * self.prob_a + self.prob_b)).clamp(MIN_PROB, 1 - MIN_PROB), self.pairs)


def couple(r: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """(N, k) class probabilities from (N, pairs) pairwise ones r[:, (i, j)] = P(i | i or j):
    the minimiser of p'Qp subject to sum p = 1 (Wu, Lin & Weng 2004, method 2, libsvm's
    coupling; its solution is non-negative), by one linear solve per row."""
    n, k = r.shape[0], int(pairs.max()) + 1
    i, j = pairs[:, 0], pairs[:, 1]
    pair_prob = r.new_zeros(n, k, k)  # [i, j]: P(class i | class i or j)
    pair_prob[:, i, j] = r
    pair_prob[:, j, i] = 1 - r
    swapped = pair_prob.transpose(1, 2)
    system = r.new_zeros(n, k + 1, k + 1)
    system[:, :k, :k] = torch.diag_embed((swapped ** 2).sum(2)) - swapped * pair_prob
    system[:, :k, k] = 1
    system[:, k, :k] = 1
    rhs = r.new_zeros(n, k + 1)
    rhs[:, k] = 1
    return torch.linalg.solve(system, rhs)[:, :k]


def platt_fit(dec: torch.Tensor, positive: torch.Tensor, max_iter: int = 100) -> Tuple[float, float]:
    """(A, B) of P(positive | dec) = 1 / (1 + exp(A dec + B)) fitted to (M,) decision values
    and bool labels: Platt's regularised targets and the Newton method with backtracking of
    Lin, Lin & Weng (2007), as libsvm fits its probability model."""
    dec = dec.to(torch.float64)
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    target = torch.full(positive.shape, 1 / (n_neg + 2), dtype=torch.float64)
    target[positive] = (n_pos + 1) / (n_pos + 2)

    def loss(a: float, b: float) -> float:
        f = dec * a + b
        return float((target * f + torch.nn.functional.softplus(-f)).sum())

    a, b = 0.0, math.log((n_neg + 1) / (n_pos + 1))
    value = loss(a, b)
    for _ in range(max_iter):
        p = torch.sigmoid(-(dec * a + b))
        d2 = p * (1 - p)
        h11, h22, h21 = float((dec * dec * d2).sum()) + 1e-12, float(d2.sum()) + 1e-12, float((dec * d2).sum())
        g1, g2 = float((dec * (target - p)).sum()), float((target - p).sum())
        if abs(g1) < 1e-5 and abs(g2) < 1e-5:
            break
        det = h11 * h22 - h21 * h21
        da, db = -(h22 * g1 - h21 * g2) / det, -(h11 * g2 - h21 * g1) / det
        slope = g1 * da + g2 * db
        step = 1.0
        while step >= 1e-10:
            new = loss(a + step * da, b + step * db)
            if new < value + 1e-4 * step * slope:
                a, b, value = a + step * da, b + step * db, new
                break
            step /= 2
        else:  # no sufficient decrease along the Newton direction: stop, as libsvm does
            break
    return a, b


def _fold_of(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N,) fold index in 0 .. FOLDS - 1, stratified: each class's rows in a random order
    (drawn with generator) are dealt out to the folds in turn."""
    fold = torch.empty_like(labels)
    for c in labels.unique():
        rows = (labels == c).nonzero().flatten()
        fold[rows[torch.randperm(rows.numel(), generator=generator)]] = torch.arange(rows.numel()) % FOLDS
    return fold


def fit_rbf_svc(features: torch.Tensor, labels: torch.Tensor, C: float, generator: torch.Generator,
                name: str) -> TorchRBFSVC:
    """SVC(C, kernel="rbf", gamma="scale") fitted on (N, d) features, with its Platt sigmoids
    fitted as libsvm's probability=True does (on 5-fold out-of-fold decision values); gamma is
    computed here (1 / (d Var), 1 where the variance is 0, as sklearn) so that the torch
    evaluation uses the same number. `name` (the SVM's role) goes into the error messages."""
    labels = labels.cpu()
    counts = torch.bincount(labels - labels.min())
    if labels.unique().numel() < 2 or int(counts[counts > 0].min()) < 2:
        raise ValueError(f"y: the {name} SVM needs at least 2 classes with at least 2 images each among its "
                         f"training rows, got class counts {counts[counts > 0].tolist()}")
    data = features.detach().to(torch.float64).cpu()
    variance = float(data.var(unbiased=False))
    gamma = 1.0 / (data.shape[1] * variance) if variance > 0 else 1.0
    model = TorchRBFSVC(_svc(C, gamma).fit(data.numpy(), labels.numpy()), gamma, features.device)
    fold = _fold_of(labels, generator)
    dec = torch.empty(labels.numel(), model.pairs.shape[0], dtype=torch.float64)
    for f in range(FOLDS):
        held = fold == f
        if held.any():
            fold_svc = _svc(C, gamma).fit(data[~held].numpy(), labels[~held].numpy())
            dec[held] = TorchRBFSVC(fold_svc, gamma, torch.device("cpu")).decision(data[held])
    classes = torch.as_tensor(model.svc.classes_)
    ab = []
    for p, (i, j) in enumerate(model.pairs.tolist()):
        rows = (labels == classes[i]) | (labels == classes[j])
        ab.append(platt_fit(dec[rows, p], labels[rows] == classes[i]))
    model.prob_a, model.prob_b = torch.tensor(ab, dtype=torch.float64, device=features.device).T
    return model


def _svc(C: float, gamma: float):
    from sklearn.svm import SVC

    return SVC(C=C, kernel="rbf", gamma=gamma, decision_function_shape="ovo")


def default_layers(model: nn.Module, probe: torch.Tensor) -> Tuple[str, str, str]:
    """The classifier's last three feature points: two top-level submodules and "penultimate"
    (the input of the last nn.Linear), found by one forward pass of `probe`.

    The top-level submodules that finish before the last nn.Linear runs are grouped into
    blocks: a block starts at a submodule with parameters and takes the parameter-free ones
    after it (activation, pooling, dropout); the first parameter-free ones (an input
    normalisation) belong to no block. A block's feature point is its last output, or, when that
    output is the penultimate itself, the last output in the block whose size differs from the
    penultimate's (a block with none only feeds the classifier and is skipped). The default is
    the last two feature points and "penultimate"."""
    head = last_linear(model)
    calls: List[Tuple[str, bool, torch.Tensor]] = []
    seen: Dict[str, object] = {}
    handles = [head.register_forward_pre_hook(lambda m, args: seen.update(penultimate=args[0], at=len(calls)))]
    for name, child in model.named_children():
        has_params = any(True for _ in child.parameters())
        handles.append(child.register_forward_hook(
            lambda m, args, out, name=name, has_params=has_params: calls.append((name, has_params, logits_of(out)))))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    points = _feature_points(calls[:seen["at"]], seen["penultimate"].flatten(1))
    if len(points) < 2:
        names = ", ".join(n for n, _ in model.named_children())
        raise ValueError(f"layers: cannot choose default layers for this classifier (feature points found: "
                         f"{points or 'none'}; top-level submodules: {names}); name three layers")
    return points[-2], points[-1], PENULTIMATE


def chosen_layers(model: nn.Module, names: Optional[Sequence[str]], x: torch.Tensor) -> Tuple[str, ...]:
    """The layers a DNR-style detector reads: `names` (checked against the model) or, when
    None, default_layers on two of the images."""
    if names is None:
        return default_layers(model, x[:2])
    check_layers(model, names)
    return tuple(names)


def _feature_points(calls: Sequence[Tuple[str, bool, object]], penultimate: torch.Tensor) -> List[str]:
    """The feature point of each block of `calls` (see default_layers), in forward order."""
    blocks: List[List[Tuple[str, object]]] = []
    for name, has_params, out in calls:
        if has_params:
            blocks.append([])
        if blocks and isinstance(out, torch.Tensor):
            blocks[-1].append((name, out.flatten(1)))
    points: List[str] = []
    for block in blocks:
        if not block:
            continue
        name, out = block[-1]
        if out.shape == penultimate.shape and torch.equal(out, penultimate):
            others = [n for n, o in block if o.shape[1] != penultimate.shape[1]]
            if not others:
                continue
            name = others[-1]
        if name not in points:
            points.append(name)
    return points


class DNR(Detector):
    """Deep neural rejection: per-layer RBF SVMs on the classifier's activations, a combiner RBF
    SVM on their class probabilities; score = -(the combiner's largest class probability).

    Options:
    - layers: the names of the layers read (submodule names of the classifier, or
      "penultimate"); None = default_layers (the last three feature points).
    - C = 100: the C of the layer SVMs (official).
    - combiner_C = 1: the C of the combiner (official: sklearn's default).
    - max_train = 2000: at most this many training images, drawn with fit()'s generator and
      split in halves (layer SVMs, combiner; see the module docstring).
    - batch_size: images per forward pass when no gradient is needed.
    Fitted: layers, layer_rows and combiner_rows (indices into fit()'s x), layer_svms and
    combiner (TorchRBFSVC, the sklearn model in .svc).
    """
    name = "dnr"
    supervised = False
    differentiable = True

    def __init__(self, layers: Optional[Sequence[str]] = None, C: float = 100.0, combiner_C: float = 1.0,
                 max_train: int = 2000, batch_size: int = 512):
        super().__init__()
        self.layer_names = layer_names(layers)
        self.C = positive(C, "C")
        self.combiner_C = positive(combiner_C, "combiner_C")
        self.max_train = integer(max_train, "max_train", 2)
        self.batch_size = integer(batch_size, "batch_size")
        self.layers: Optional[Tuple[str, ...]] = None
        self.layer_rows: Optional[torch.Tensor] = None
        self.combiner_rows: Optional[torch.Tensor] = None
        self.layer_svms: List[TorchRBFSVC] = []
        self.combiner: Optional[TorchRBFSVC] = None

    def _fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: Optional[torch.Tensor],
             generator: torch.Generator) -> None:
        self.layers = chosen_layers(model, self.layer_names, x)
        rows = torch.randperm(x.shape[0], generator=generator)[:min(self.max_train, x.shape[0])]
        half = rows.numel() // 2
        self.layer_rows, self.combiner_rows = rows[:half], rows[half:]
        _, feats = batched_features(model, x[self.layer_rows], self.layers, self.batch_size)
        self.layer_svms = [fit_rbf_svc(feats[layer], y[self.layer_rows], self.C, generator, f"layer {layer!r}")
                           for layer in self.layers]
        with torch.no_grad():
            probs = torch.cat([self._layer_probabilities(x[self.combiner_rows[i:i + self.batch_size]])
                               for i in range(0, self.combiner_rows.numel(), self.batch_size)])
        self.combiner = fit_rbf_svc(probs, y[self.combiner_rows], self.combiner_C, generator, "combiner")

    def _layer_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(N, sum of the layer SVMs' class counts): the layer SVMs' class probabilities, concatenated."""
        _, feats = logits_and_features(self.model, x, self.layers)
        return torch.cat([svm.proba(feats[layer]) for svm, layer in zip(self.layer_svms, self.layers)], 1)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return -self.combiner.proba(self._layer_probabilities(x)).max(1).values.to(x.dtype)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return self._score_batch(x)
        with torch.no_grad():
            return torch.cat([self._score_batch(x[i:i + self.batch_size])
                              for i in range(0, x.shape[0], self.batch_size)])
