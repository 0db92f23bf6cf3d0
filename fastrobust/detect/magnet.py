"""MagNet's detector (Meng & Chen 2017) as the survey runs it on MNIST (spec:
/work/shared/spec/methods-more.md §1.3 "MagNet", §1.7; official code: `detect_magnet.py`,
`magnet/defensive_models.py`, `magnet/worker.py` of aldahdooh/detectors_review).

Two denoising autoencoders are trained on clean images; an image whose reconstruction error is
unusually large is adversarial. The reformer is not part of detection (as in the survey).

Deviations from the official code:
- One score instead of a set of flags. The official rule flags x if ANY detector d (an
  autoencoder and a norm p) has error_d(x) = mean over pixels of |x - AE_d(x)|^p above its own
  threshold. Here score(x) = max_d error_d(x) / q_d, with q_d the (1 - drop_rate) quantile of
  error_d on the clean *training* images, so that `score > 1` is the official any-detector rule
  (with training-set quantiles) and `threshold_at_fpr` on clean validation images picks the
  common operating point of the protocol: a threshold t on the score is the threshold t q_d on
  every detector d at once. The official thresholds are each detector's own quantile on 5000
  held-out validation images (the training images' quantiles here).
- Odd image sizes: Keras' AE-I fails there (its "same" average pooling gives ceil(H/2), the
  up-sampling 2 ceil(H/2) != H). Ours pools with ceil_mode (the last odd row/column is averaged
  alone, exactly Keras' "same" pooling, which leaves the padding out of the mean) and crops the
  up-sampled map to the input's size before the next convolution; even sizes are unchanged.
- Activity L2: like Keras' `activity_regularizer=l2(w)`, on every convolution's output
  (sigmoid included); the sum of squares is taken per image and averaged over the batch
  (tf.keras divides the batch's sum by the batch size).
- Training is deterministic: parameter initialisation, shuffling and the training noise are
  drawn from fit()'s generator (the global RNG is left as it was).
- Default epochs (epochs=None): the official MNIST 100, or more on a small training set, so
  that each autoencoder takes at least MIN_STEPS = 2400 Adam steps (MNIST's 60000 images make
  235 batches of 256 per epoch; the 1438 8x8 training digits make 6, so they get 400 epochs,
  about 25 s on one CPU core: after 100 epochs there the autoencoders reconstruct PGD digits
  better than clean ones, AUROC 3-13 % measured by fastrobust detect).

The score keeps the autograd graph to x (differentiable = True) so that detector-aware attacks
can go through it; the autoencoders are frozen (eval mode, no parameter gradients) after fit.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._options import integer, number, positive
from .base import Detector

KINDS = ("I", "II")
# The official MNIST pair: detector I = AE-I with p = 2, detector II = AE-II with p = 1.
MNIST_DETECTORS = (("I", 2.0), ("II", 1.0))


class _SigmoidConv(nn.Sequential):
    """A 3x3 "same" convolution followed by a sigmoid: MagNet's only trainable layer."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.Sigmoid())


class MagNetAE(nn.Module):
    """MagNet's convolutional autoencoders (official `DenoisingAutoEncoder`, MNIST structures).

    kind "I":  conv - AvgPool2 - conv (encoder), conv - Upsample x2 - conv (decoder), conv to C;
    kind "II": conv - conv - conv to C.
    Every conv is 3x3, "same" padded, with `filters` filters and a sigmoid. The output has the
    input's shape for any H, W (AE-I pools in ceil mode and crops the up-sampled map).
    """

    def __init__(self, channels: int, kind: str = "I", filters: int = 3):
        super().__init__()
        integer(channels, "channels")
        integer(filters, "filters")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        if kind == "I":
            layers: List[nn.Module] = [_SigmoidConv(channels, filters), nn.AvgPool2d(2, ceil_mode=True),
                                       _SigmoidConv(filters, filters), _SigmoidConv(filters, filters),
                                       nn.Upsample(scale_factor=2, mode="nearest"), _SigmoidConv(filters, filters)]
        else:
            layers = [_SigmoidConv(channels, filters), _SigmoidConv(filters, filters)]
        self.layers = nn.ModuleList(layers + [_SigmoidConv(filters, channels)])

    def forward_with_activity(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, activity): activity is the per-image sum of squares of every conv
        output, averaged over the batch (the term Keras' activity_regularizer adds)."""
        height, width = x.shape[-2:]
        activity = x.new_zeros(())
        out = x
        for layer in self.layers:
            out = layer(out)
            if isinstance(layer, nn.Upsample):
                out = out[..., :height, :width]  # odd sizes: drop the row/column ceil pooling added
            elif isinstance(layer, _SigmoidConv):
                activity = activity + out.square().flatten(1).sum(1).mean()
        return out, activity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_activity(x)[0]


OFFICIAL_EPOCHS = 100
MIN_STEPS = 2400


class MagNet(Detector):
    """MagNet's reconstruction-error detectors (unsupervised, differentiable).

    noise: v, the training input is clip(x + v N(0, 1), 0, 1) with target x (0.1 as MNIST);
    epochs, batch_size, lr: Adam training of each autoencoder (official MNIST: 100, 256, 1e-3;
    epochs None: max(100, the epochs of MIN_STEPS steps));
    activity_l2: weight of the activity L2 on every conv output (official 1e-9);
    detectors: (kind, p) pairs, one autoencoder each (default the official MNIST pair);
    drop_rate: each detector's error is divided by its (1 - drop_rate) quantile on the clean
    training images (official drop_rate for MNIST 0.001), so score > 1 is the official rule.
    """
    name = "magnet"
    supervised = False
    differentiable = True

    def __init__(self, noise: float = 0.1, epochs: Optional[int] = None, batch_size: int = 256, lr: float = 1e-3,
                 activity_l2: float = 1e-9, detectors: Sequence[Tuple[str, float]] = MNIST_DETECTORS,
                 drop_rate: float = 0.001):
        super().__init__()
        self.noise = number(noise, "noise", 0.0)
        self.epochs = None if epochs is None else integer(epochs, "epochs")
        self.batch_size = integer(batch_size, "batch_size")
        self.lr = positive(lr, "lr")
        self.activity_l2 = number(activity_l2, "activity_l2", 0.0)
        self.detectors = _check_detectors(detectors)
        self.drop_rate = number(drop_rate, "drop_rate", 0.0, 1.0, high_open=True)
        self.autoencoders: List[MagNetAE] = []
        self.scales: Optional[torch.Tensor] = None  # q_d, one per detector

    def _fit(self, model, x, y, x_adv, generator) -> None:
        self.autoencoders = [self._train_autoencoder(kind, x, generator) for kind, _ in self.detectors]
        with torch.no_grad():
            errors = torch.cat([self._errors(x[i:i + self.batch_size])
                                for i in range(0, x.shape[0], self.batch_size)])
        quantiles = torch.quantile(errors.double(), 1.0 - self.drop_rate, dim=0)
        # a perfect reconstruction of every training image would make q_d zero: keep the division finite
        self.scales = quantiles.clamp_min(torch.finfo(torch.float32).tiny).to(errors.dtype)

    def epochs_for(self, n: int) -> int:
        """The epochs of a fit on n images (the option, or the MIN_STEPS rule)."""
        if self.epochs is not None:
            return self.epochs
        return max(OFFICIAL_EPOCHS, math.ceil(MIN_STEPS / math.ceil(n / self.batch_size)))

    def _train_autoencoder(self, kind: str, x: torch.Tensor, generator: torch.Generator) -> MagNetAE:
        """Trains one autoencoder to denoise clip(x + v N(0,1), 0, 1) into x (MSE + activity L2),
        every random draw from `generator`; returns it frozen in eval mode."""
        seed = int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU initialisation; the caller's RNG state is restored
            ae = MagNetAE(x.shape[1], kind).to(x.device, x.dtype)
        optimizer = torch.optim.Adam(ae.parameters(), lr=self.lr)
        for _ in range(self.epochs_for(x.shape[0])):
            order = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device)
            for i in range(0, x.shape[0], self.batch_size):
                target = x[order[i:i + self.batch_size]]
                noise = torch.randn(target.shape, generator=generator, dtype=target.dtype,
                                    device=generator.device).to(x.device)
                recon, activity = ae.forward_with_activity((target + self.noise * noise).clamp(0.0, 1.0))
                loss = F.mse_loss(recon, target) + self.activity_l2 * activity
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        ae.eval()
        ae.requires_grad_(False)
        return ae

    def _errors(self, x: torch.Tensor) -> torch.Tensor:
        """(N, detectors): mean over pixels of |x - AE_d(x)|^p, differentiable in x."""
        cols = []
        for ae, (_, p) in zip(self.autoencoders, self.detectors):
            ae.to(x.device)
            diff = (x - ae(x.to(next(ae.parameters()).dtype))).abs()
            cols.append(diff.pow(p).flatten(1).mean(1))
        return torch.stack(cols, 1)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        errors = self._errors(x)
        return (errors / self.scales.to(errors.device)).max(1).values


def _check_detectors(detectors) -> Tuple[Tuple[str, float], ...]:
    """detectors: a non-empty sequence of (kind, p) with kind in KINDS and p > 0."""
    try:
        pairs = tuple((kind, p) for kind, p in detectors)
    except (TypeError, ValueError):
        raise ValueError(f"detectors must be a sequence of (kind, p) pairs, got {detectors!r}") from None
    if not pairs:
        raise ValueError("detectors must name at least one (kind, p) pair")
    for kind, p in pairs:
        if kind not in KINDS:
            raise ValueError(f"detectors: kind must be one of {KINDS}, got {kind!r}")
        positive(p, "detectors: p")
    return tuple((kind, float(p)) for kind, p in pairs)
