"""SFAD, selective and feature based adversarial detection (Aldahdooh et al. 2021), as the survey
runs it (spec: /work/shared/spec/methods-more.md §1.3 "SFAD", §1.2, §1.7; official code:
`detect_sfad.py`, `sfad/sfad_mnist_a.py`, `sfad/sfad_mnist_b.py` of aldahdooh/detectors_review).

The classifier's activations at three layers (DNR's, dnr.default_layers) each feed a selective
network (SelectiveNet, Geifman & El-Yaniv 2019) trained on the clean training images and their
labels: a class head, a selection head g (is the image in the region the head is sure of?) and an
auxiliary class head that only shapes the training. An image is rejected when a selection score
is low, when the fused class confidence is low, or when the fused label is not the classifier's.

The head (SFADHead) on a layer's map of C channels; a flat output (N, d) is read as (N, d, 1, 1),
as the official code reshapes it:
1. bottleneck: 3x3 convs to C/2, C/4, C/16, C/4, C/2 channels (each BN + ReLU; at least one
   channel), then a 3x3 conv back to C without BN or ReLU (the official last conv);
2. t = |input + bottleneck(input)|, then the resampling residual t + avgpool2(avgpool2(up2(up2(t))))
   (bilinear x2 twice, then 2x2 average pooling twice, chained as in the official code, so the map
   comes back at its own size: every H x W works, 1x1 included, and nothing is skipped);
3. a second copy of 1-2 whose input and whose |input + bottleneck| get Gaussian noise of std
   noise_std (Keras' GaussianNoise: in training only, so at scoring time both copies see the
   same map and the score is deterministic);
4. the two copies concatenated; 1x1 conv `width`, 3x3 conv width/2, 1x1 conv width/4 (each BN +
   ReLU); flatten; dense `dense` + BN + ReLU: the trunk h.
On h: class logits (dense, softmax), the selection g = sigmoid(dense_1(ReLU(BN(dense(h))) / 10))
(the spec's "dense 512 -> /10 -> sigmoid": Dense(512), BN, ReLU, divided by 10, Dense(1), sigmoid,
as the official code), and auxiliary logits (dense without bias, softmax).

Training, per head (selective_loss): alpha [r + lam max(0, c - mean g)^2] + (1 - alpha) CE_aux
with the selective risk r = sum_i g_i CE_i / sum_i g_i, plus weight_decay times the sum of
squared kernels of every conv and of the selection head's first dense (Keras' l2(5e-4) there);
SGD, Nesterov momentum 0.9, lr 0.01, 30 epochs of batches of 200 (the official settings; on
the 1150 head-training rows of the 8x8 digits the three heads train in about 40 s on one CPU
core, and 10 epochs, about 13 s, reach the same held-out accuracy, about 98 %), each head on the
frozen classifier's activations of the same training rows. Parameter initialisation, batch
order and training noise are drawn from fit()'s generator (the global RNG is left as it was).

Score (higher = more adversarial):
    score = max(term_1, ..., term_L, term_conf) + DISAGREEMENT * [fused label != classifier label]
term_l = tanh((t_l - v_l) / (m_l - t_l)) with v_l the selection logit of layer l (g_l =
sigmoid(v_l)), t_l its `selection_percentile` percentile and m_l its median on the percentile rows;
term_conf is the same for the logit of the fused confidence, v = log P_max - log(1 - P_max), at
`confidence_percentile`. A term is > 0 exactly when its rule fires and lies in [-1, 1] (tanh
rounds to +-1 far from the threshold), so `score > 0` is the official rule (with thresholds from
held-out training rows; the official rejects at equality too, a tie of measure zero), and every
image whose labels disagree (score in [2, 4]) ranks above every image whose labels agree (score
in [-1, 1]). The score keeps the autograd graph to x (differentiable = True); the disagreement
term is piecewise constant in x (zero gradient, a jump where the fused argmax or the
classifier's changes), and the max is differentiable almost everywhere. The heads are frozen
(eval mode, no parameter gradients) after fit.

Deviations from the official code:
- Fusion ("model b"): the official trains a second selective network (dense 128 and the three
  heads) on the concatenated class probabilities of the per-layer heads and reads its
  confidence and selection score. Here the fused class probabilities are the average of the
  per-layer heads' (no second network), and the selection rule is per layer: any g_l below its
  own percentile (the official checks the per-layer and model-b selections for adversarial
  images but only model b's for clean MNIST images), and the confidence rule is the fused
  confidence's (the official's on MNIST is model b's; on the other data sets the largest of
  the four models' confidence thresholds).
- Percentiles: the official takes them on the clean, correctly classified *test* images (in
  sample, §1.7). Here a `holdout` fraction of fit()'s training images (drawn with the generator)
  is kept out of head training (train_rows vs holdout); the percentiles come from those held-out
  images the classifier classifies correctly (percentile_rows). The protocol's operating point
  comes from threshold_at_fpr on validation images.
- Selection and confidence in logit space: with coverage 1.0 the selection heads are pushed to
  g ~ 1, where float32 sigmoids and maximum probabilities saturate; the logits keep the ranking.
  A percentile of the logits is the logit of the percentile of g up to the linear interpolation
  between two neighbouring order statistics.
- Selective risk: the official Keras loss is mean_i g_i CE_i (no division); here SelectiveNet's
  empirical selective risk, divided by the batch's mean g.
- Widths: the official trunk is 1x1 conv 1024, 3x3 conv 512, 1x1 conv 256 and dense 512 (the
  selection head's dense too): width=1024, dense=512 here. The defaults (64, 64) suit 8x8 digits.
- Optimiser: the official Keras decay 1e-6 (lr / (1 + 1e-6 step), under 0.1 % over its 30 MNIST
  epochs) is left out; its lr_drop of 500 epochs never fires in 30. A last batch of a single
  image is skipped (BatchNorm in training needs two).
- BatchNorm: Keras' eps 1e-3, but torch's momentum 0.1 (Keras' 0.99 is torch's 0.01), so that
  the running statistics settle within the few steps of a small training set.
- Bilinear up-sampling: torch's half-pixel sampling (align_corners=False); Keras 2.3.1 on TF 2.2
  most likely samples without the half-pixel offset (TF1 resize_bilinear; UNCONFIRMED).
- Initialisation: Keras' glorot_uniform kernels and zero biases, drawn with torch's RNG.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._options import integer, layer_names, number
from .base import Detector
from .dnr import chosen_layers
from .features import layer_maps

BN_EPS = 1e-3  # Keras' BatchNormalization epsilon
DISAGREEMENT = 3.0  # added when the fused label is not the classifier's: above every other score
SELECTION_SCALE = 0.1  # the official Lambda(x / 10) before the selection's last dense
# (coverage, selection percentile, confidence percentile): the official MNIST and CIFAR settings
MNIST = (1.0, 6.0, 1.2)
CIFAR = (0.9, 4.0, 9.0)


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout, eps=BN_EPS),
                         nn.ReLU())


def _resample_residual(t: torch.Tensor) -> torch.Tensor:
    """t + avgpool2(avgpool2(up2(up2(t)))): the official up/down-sampling branch, added back; the
    map keeps its size for every H x W."""
    up = t
    for _ in range(2):
        up = F.interpolate(up, scale_factor=2, mode="bilinear", align_corners=False)
    return t + F.avg_pool2d(F.avg_pool2d(up, 2), 2)


class _Branch(nn.Module):
    """Steps 1-2 of the head: |x + bottleneck(x)|, then the resampling residual; `noise` (a
    function or None) perturbs the input and the |x + bottleneck(x)| map (the noisy copy)."""

    def __init__(self, channels: int):
        super().__init__()
        layers: List[nn.Module] = []
        cin = channels
        for divisor in (2, 4, 16, 4, 2):
            cout = max(1, channels // divisor)
            layers.append(_conv_bn_relu(cin, cout, 3))
            cin = cout
        layers.append(nn.Conv2d(cin, channels, 3, padding=1))
        self.bottleneck = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, noise=None) -> torch.Tensor:
        if noise is not None:
            x = noise(x)
        t = (x + self.bottleneck(x)).abs()
        if noise is not None:
            t = noise(t)
        return _resample_residual(t)


class SFADHead(nn.Module):
    """One layer's selective network (see the module docstring): forward(maps) gives (class
    logits (N, K), selection logits (N,), auxiliary logits (N, K)); g = sigmoid(selection logit).

    shape: (C, H, W) of the layer's maps; a flat layer is (d, 1, 1) and its (N, d) outputs are
    accepted as they are. noise_std: the training noise of the noisy copy (official 1.0).
    """

    def __init__(self, shape: Sequence[int], num_classes: int, width: int = 64, dense: int = 64,
                 noise_std: float = 1.0):
        super().__init__()
        if (not isinstance(shape, (tuple, list)) or len(shape) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
            raise ValueError(f"shape must be (channels, height, width) of positive ints, got {shape!r}")
        integer(num_classes, "num_classes", 2)
        integer(width, "width", 1)
        integer(dense, "dense", 1)
        self.shape = tuple(shape)
        self.noise_std = number(noise_std, "noise_std", 0.0)
        channels, height, map_width = self.shape
        self.clean = _Branch(channels)
        self.noisy = _Branch(channels)
        half, quarter = max(1, width // 2), max(1, width // 4)
        self.trunk = nn.Sequential(
            _conv_bn_relu(2 * channels, width, 1), _conv_bn_relu(width, half, 3), _conv_bn_relu(half, quarter, 1),
            nn.Flatten(), nn.Linear(quarter * height * map_width, dense), nn.BatchNorm1d(dense, eps=BN_EPS), nn.ReLU())
        self.classes = nn.Linear(dense, num_classes)
        self.selection_hidden = nn.Sequential(nn.Linear(dense, dense), nn.BatchNorm1d(dense, eps=BN_EPS), nn.ReLU())
        self.selection_out = nn.Linear(dense, 1)
        self.auxiliary = nn.Linear(dense, num_classes, bias=False)
        _keras_init(self)

    def forward(self, maps: torch.Tensor, generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three heads' logits; in training mode the noisy copy draws its noise from
        `generator` (None: the global RNG)."""
        if maps.dim() == 2:
            maps = maps[:, :, None, None]
        if tuple(maps.shape[1:]) != self.shape:
            raise ValueError(f"maps must be (N, {', '.join(map(str, self.shape))}), got {tuple(maps.shape)}")
        h = self.trunk(torch.cat([self.clean(maps), self.noisy(maps, self._noise(generator))], 1))
        selection = self.selection_out(self.selection_hidden(h) * SELECTION_SCALE).squeeze(1)
        return self.classes(h), selection, self.auxiliary(h)

    def _noise(self, generator: Optional[torch.Generator]):
        """The noisy copy's perturbation t -> t + noise_std N(0, 1) drawn from `generator`, in
        training mode only (None otherwise: Keras' GaussianNoise is off at inference)."""
        if not self.training or self.noise_std == 0:
            return None

        def add_noise(t: torch.Tensor) -> torch.Tensor:
            device = generator.device if generator is not None else t.device
            draw = torch.randn(t.shape, generator=generator, dtype=t.dtype, device=device)
            return t + self.noise_std * draw.to(t.device)
        return add_noise

    def regularized_weights(self) -> List[torch.Tensor]:
        """The kernels the official code puts an L2 regulariser on: every conv's and the
        selection head's first dense."""
        convs = [m.weight for m in self.modules() if isinstance(m, nn.Conv2d)]
        return convs + [self.selection_hidden[0].weight]


def _keras_init(module: nn.Module) -> None:
    """Keras' defaults: glorot_uniform kernels, zero biases (torch's RNG)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def selective_loss(class_logits: torch.Tensor, selection: torch.Tensor, aux_logits: torch.Tensor,
                   labels: torch.Tensor, coverage: float, alpha: float, lam: float) -> torch.Tensor:
    """SelectiveNet's loss: alpha [r + lam max(0, c - mean g)^2] + (1 - alpha) CE_aux, with the
    empirical selective risk r = sum g_i CE_i / sum g_i and g = sigmoid(selection)."""
    g = torch.sigmoid(selection)
    ce = F.cross_entropy(class_logits, labels, reduction="none")
    risk = (g * ce).sum() / g.sum().clamp_min(torch.finfo(g.dtype).tiny)
    penalty = lam * F.relu(coverage - g.mean()) ** 2
    return alpha * (risk + penalty) + (1 - alpha) * F.cross_entropy(aux_logits, labels)


def fused_log_probabilities(class_logits: torch.Tensor) -> torch.Tensor:
    """(N, K) log of the average of the (L, N, K) heads' class probabilities, in log space."""
    return torch.logsumexp(F.log_softmax(class_logits, -1), 0) - math.log(class_logits.shape[0])


def confidence_logit(log_p: torch.Tensor) -> torch.Tensor:
    """(N,) log P_max - log(1 - P_max) of (N, K) log probabilities, with 1 - P_max summed from the
    other classes (exact where P_max rounds to 1)."""
    top = F.one_hot(log_p.argmax(1), log_p.shape[1]).bool()
    return log_p.max(1).values - log_p.masked_fill(top, float("-inf")).logsumexp(1)


class SFAD(Detector):
    """Selective and feature based adversarial detection (unsupervised, differentiable).

    Options:
    - layers: the classifier's layers read (submodule names or "penultimate"); None = DNR's
      default_layers (the last three feature points).
    - width = 64, dense = 64: the trunk's first conv width (then width/2, width/4) and its dense
      width (official 1024 and 512).
    - epochs = 30, batch_size = 200 (also the scoring batch), lr = 0.01 (SGD,
      Nesterov momentum 0.9), weight_decay = 5e-4 (the official Keras l2 on the kernels).
    - noise_std = 1.0: the noisy copy's Gaussian noise (training only).
    - alpha = 0.5, lam = 32: SelectiveNet's loss weights.
    - coverage, selection_percentile, confidence_percentile: None = the official setting for
      the images' channel count: one channel (MNIST) 1.0, 6, 1.2; otherwise (CIFAR) 0.9, 4, 9.
    - holdout = 0.2: the fraction of training images kept out of head training for the
      percentiles.
    Fitted: layers, heads (SFADHead per layer), train_rows, holdout_rows and percentile_rows
    (indices into fit()'s x), thresholds and medians ((L + 1,): the selection logits', then the
    confidence logit's), coverage_used, num_classes.
    """
    name = "sfad"
    supervised = False
    differentiable = True

    def __init__(self, layers: Optional[Sequence[str]] = None, width: int = 64, dense: int = 64, epochs: int = 30,
                 batch_size: int = 200, lr: float = 0.01, weight_decay: float = 5e-4, noise_std: float = 1.0,
                 alpha: float = 0.5, lam: float = 32.0, coverage: Optional[float] = None,
                 selection_percentile: Optional[float] = None, confidence_percentile: Optional[float] = None,
                 holdout: float = 0.2):
        super().__init__()
        self.layer_names = layer_names(layers)
        self.width = integer(width, "width", 1)
        self.dense = integer(dense, "dense", 1)
        self.epochs = integer(epochs, "epochs", 1)
        self.batch_size = integer(batch_size, "batch_size", 2)
        self.lr = number(lr, "lr", 0.0, low_open=True)
        self.weight_decay = number(weight_decay, "weight_decay", 0.0)
        self.noise_std = number(noise_std, "noise_std", 0.0)
        self.alpha = number(alpha, "alpha", 0.0, high=1.0)
        self.lam = number(lam, "lam", 0.0)
        self.coverage = None if coverage is None else number(coverage, "coverage", 0.0, 1.0, low_open=True)
        self.selection_percentile = _percentile(selection_percentile, "selection_percentile")
        self.confidence_percentile = _percentile(confidence_percentile, "confidence_percentile")
        self.holdout = number(holdout, "holdout", 0.0, 1.0, low_open=True, high_open=True)
        self.layers: Optional[Tuple[str, ...]] = None
        self.heads: List[SFADHead] = []
        self.train_rows: Optional[torch.Tensor] = None
        self.holdout_rows: Optional[torch.Tensor] = None
        self.percentile_rows: Optional[torch.Tensor] = None
        self.thresholds: Optional[torch.Tensor] = None
        self.medians: Optional[torch.Tensor] = None
        self.coverage_used: Optional[float] = None
        self.num_classes: Optional[int] = None

    # -- fitting ---------------------------------------------------------------------------------
    def _fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: Optional[torch.Tensor],
             generator: torch.Generator) -> None:
        self.layers = chosen_layers(model, self.layer_names, x)
        with torch.no_grad():
            self.num_classes = int(layer_maps(model, x[:1], self.layers)[0].shape[1])
        _check_labels(y, self.num_classes)
        official = MNIST if x.shape[1] == 1 else CIFAR
        self.coverage_used = official[0] if self.coverage is None else self.coverage
        self._split_rows(x.shape[0], generator)
        maps = self._maps(x[self.train_rows])
        self.heads = [self._train_head(maps[i], y[self.train_rows].to(maps[i].device), generator)
                      for i in range(len(self.layers))]
        self._fit_thresholds(x[self.holdout_rows], y[self.holdout_rows], official)

    def _split_rows(self, n: int, generator: torch.Generator) -> None:
        """train_rows (the heads) and holdout_rows (the percentiles): a random split, disjoint."""
        n_hold = round(self.holdout * n)
        if n_hold < 1 or n - n_hold < 2:
            raise ValueError(f"holdout: {self.holdout} of {n} images leaves {n_hold} for the percentiles and "
                             f"{n - n_hold} for the heads; at least 1 and 2 are needed")
        rows = torch.randperm(n, generator=generator, device=generator.device).cpu()
        self.holdout_rows, self.train_rows = rows[:n_hold], rows[n_hold:]

    def _maps(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The frozen classifier's maps of every layer (4-D; flat outputs as (N, d, 1, 1)), in
        batches, without gradients."""
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], self.batch_size):
                _, maps = layer_maps(self.model, x[i:i + self.batch_size], self.layers)
                outs.append([_as_maps(maps[layer], layer) for layer in self.layers])
        return [torch.cat([o[i] for o in outs]) for i in range(len(self.layers))]

    def _train_head(self, maps: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> SFADHead:
        """One head trained with selective_loss on (maps, labels), every random draw from
        `generator`; returned frozen in eval mode."""
        seed = int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU initialisation; the caller's RNG state is restored
            head = SFADHead(tuple(maps.shape[1:]), self.num_classes, self.width, self.dense, self.noise_std)
        head = head.to(maps.device, maps.dtype).train()
        optimizer = torch.optim.SGD(head.parameters(), lr=self.lr, momentum=0.9, nesterov=True)
        for _ in range(self.epochs):
            order = torch.randperm(maps.shape[0], generator=generator, device=generator.device).to(maps.device)
            for i in range(0, maps.shape[0], self.batch_size):
                rows = order[i:i + self.batch_size]
                if rows.numel() < 2:
                    continue  # BatchNorm cannot train on one image
                class_logits, selection, aux_logits = head(maps[rows], generator)
                loss = selective_loss(class_logits, selection, aux_logits, labels[rows], self.coverage_used,
                                      self.alpha, self.lam)
                if self.weight_decay > 0:
                    loss = loss + self.weight_decay * sum(w.square().sum() for w in head.regularized_weights())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return head.eval().requires_grad_(False)

    def _fit_thresholds(self, x: torch.Tensor, y: torch.Tensor, official: Tuple[float, float, float]) -> None:
        """thresholds and medians of the selection logits and the confidence logit on the held-out
        images the classifier classifies correctly (the official uses the correct test images)."""
        with torch.no_grad():
            logits, class_logits, selection = self._batched_outputs(x)
        correct = (logits.argmax(1) == y.to(logits.device)).cpu()
        if not correct.any():
            raise ValueError("holdout: the classifier classifies none of the held-out images correctly, so there "
                             "are no clean images to take the percentiles on")
        self.percentile_rows = self.holdout_rows[correct]
        stats = _statistics(class_logits[:, correct], selection[:, correct]).double()
        q_s = official[1] if self.selection_percentile is None else self.selection_percentile
        q_c = official[2] if self.confidence_percentile is None else self.confidence_percentile
        q = torch.tensor([q_s] * len(self.layers) + [q_c], dtype=torch.float64, device=stats.device) / 100
        self.thresholds = torch.stack([torch.quantile(row, p) for row, p in zip(stats, q)]).float()
        self.medians = torch.quantile(stats, 0.5, dim=1).float()

    # -- scoring ---------------------------------------------------------------------------------
    def head_outputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(classifier logits (N, K), class logits (L, N, K), selection logits (L, N)) of the
        frozen heads on x's maps; gradients flow to x when it requires them."""
        logits, maps = layer_maps(self.model, x, self.layers)
        outs = [head(_as_maps(maps[layer], layer).to(next(head.parameters()).dtype))
                for head, layer in zip(self.heads, self.layers)]
        return logits, torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def _batched_outputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outs = [self.head_outputs(x[i:i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
        return tuple(torch.cat([o[k] for o in outs], dim=0 if k == 0 else 1) for k in range(3))

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            outputs = self.head_outputs(x)
        else:
            with torch.no_grad():
                outputs = self._batched_outputs(x)
        logits, class_logits, selection = outputs
        stats = _statistics(class_logits, selection)
        thresholds, medians = self.thresholds.to(stats), self.medians.to(stats)
        spread = (medians - thresholds).clamp_min(torch.finfo(stats.dtype).tiny)
        terms = torch.tanh((thresholds[:, None] - stats) / spread[:, None])
        disagree = fused_log_probabilities(class_logits).argmax(1) != logits.argmax(1)
        return (terms.max(0).values + DISAGREEMENT * disagree.to(stats.dtype)).to(x.dtype)


def _statistics(class_logits: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
    """(L + 1, N): the selection logits, then the fused confidence logit (low = reject)."""
    return torch.cat([selection, confidence_logit(fused_log_probabilities(class_logits))[None]])


def _as_maps(t: torch.Tensor, layer: str) -> torch.Tensor:
    """A layer's output as 4-D maps: (N, d) becomes (N, d, 1, 1), as the official reshapes it."""
    if t.dim() == 2:
        return t[:, :, None, None]
    if t.dim() != 4:
        raise ValueError(f"layers: SFAD reads (N, C, H, W) or (N, d) outputs; layer {layer!r} gives "
                         f"{tuple(t.shape)}")
    return t


def _check_labels(y: torch.Tensor, num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"model: SFAD needs a classifier with at least 2 classes, got {num_classes} logits")
    if y.is_floating_point() or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"y must hold integer labels in 0 .. {num_classes - 1} (the classifier's classes), got "
                         f"{y.dtype} in [{y.min().item()}, {y.max().item()}]")






def _percentile(value, name: str) -> Optional[float]:
    return None if value is None else number(value, name, 0.0, 100.0, low_open=True, high_open=True)
