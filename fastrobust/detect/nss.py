"""NSS, the natural-scene-statistics detector (Kherchouche et al. 2020) as the survey runs it
(spec: /work/shared/spec/methods-more.md §1.3 "NSS", §1.2, §1.7; official code: `detect_nss.py`
and `nss/MSCN.py` of aldahdooh/detectors_review).

Each image is summarised by the 18 single-scale BRISQUE features of its MSCN map (mean-subtracted,
contrast-normalised luminance): a GGD fit of the map (shape, variance) and an AGGD fit of each of
its four neighbour products (shape, mean, left and right variance). An SVM with a sigmoid kernel
separates the features of clean images from those of their adversarial versions. Images are
in [0, 1] and the MSCN constant is 1/255 on that scale (as in the official code), which gives
exactly BRISQUE's features of the same images on the [0, 255] scale with constant 1.

Deviations from the official code:
- Padding: the local mean and deviation use replicate padding; the official
  scipy.signal.convolve2d(mode="same") pads with zeros, which darkens the local mean along the
  border and gives every image a bright MSCN frame.
- Shape parameters: the nearest point of the grid 0.2, 0.201, .., 10 in the moment ratio
  Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) (the BRISQUE lookup of Mittal et al.); the official
  code solves the same equation with scipy.optimize.root started at 0.2 (unbounded).
- The two MSCN features are BRISQUE's symmetric GGD fit (shape from E|m|^2 / E[m^2], variance
  E[m^2]); the official code fits its AGGD to the map and reports that shape and
  (sigma_l^2 + sigma_r^2) / 2. Both agree on a symmetric map.
- An empty side (no negative or no non-negative values, e.g. a constant image) gives variance 0
  and finite features; the official code divides by zero there and later replaces the NaNs by
  0 (np.nan_to_num), test features only.
- A constant feature of the training set is mapped to -1 (range taken as 1, as sklearn's
  MinMaxScaler does); the official scaling divides by zero.
- The SVC is fitted without probability=True: the score is its decision_function, which does
  not use Platt scaling (libsvm fits the same SVM either way).
- Training data: fit() takes x_adv as given. The official training set mixes successful PGD-L∞
  examples at six eps (1/32 .. 1/2, on disjoint images, shares `pgd_percent`) with the clean
  versions of the same images; that mixing belongs to the caller (fastrobust.detect.protocol).
  The official detector is trained on test images and evaluated on all of them (§1.7); here
  fit() sees only what the caller gives it.

The score is not differentiable (differentiable = False): the shape lookup is piecewise
constant and the SVM runs in sklearn on numpy copies, so detector-aware attacks need BPDA
(e.g. the identity or a smooth surrogate for the features in the backward pass).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._options import positive
from .base import Detector

GREY_WEIGHTS = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray
WINDOW = 7
WINDOW_SIGMA = 7 / 6
STABILITY = 1 / 255  # the MSCN constant for pixels in [0, 1] (1 on the [0, 255] scale)
ALPHA_GRID = (0.2, 10.0, 0.001)  # start, end, step of the shape lookup
FEATURE_NAMES = ("mscn_alpha", "mscn_var") + tuple(
    f"{pair}_{p}" for pair in ("horizontal", "vertical", "main_diagonal", "secondary_diagonal")
    for p in ("alpha", "mean", "var_left", "var_right"))
_TINY = torch.finfo(torch.float64).tiny


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) luminance of (N, 1 or 3, H, W) images, with skimage's rgb2gray weights for
    colour (the official code converts with rgb2gray)."""
    if x.shape[1] == 1:
        return x[:, 0]
    if x.shape[1] == 3:
        return torch.einsum("nchw,c->nhw", x, x.new_tensor(GREY_WEIGHTS))
    raise ValueError(f"x must have 1 (grey) or 3 (RGB) channels for NSS, got {x.shape[1]}")


def gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 7x7 Gaussian window (sigma 7/6) of BRISQUE, normalised to sum 1, as a conv weight."""
    r = torch.arange(WINDOW, dtype=dtype, device=device) - WINDOW // 2
    g = torch.exp(-r * r / (2 * WINDOW_SIGMA ** 2))
    k = torch.outer(g, g)
    return (k / k.sum()).view(1, 1, WINDOW, WINDOW)


def mscn(grey: torch.Tensor) -> torch.Tensor:
    """(I - mu) / (sigma + 1/255) of (N, H, W) images in [0, 1], mu and sigma the Gaussian-
    weighted local mean and deviation (replicate padding). Scaling the images and the constant
    together leaves it unchanged: it equals BRISQUE's map of 8-bit images with constant 1."""
    img = grey.unsqueeze(1)
    window = gaussian_window(img.dtype, img.device)
    pad = (WINDOW // 2,) * 4

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, pad, mode="replicate"), window)

    mu = local_mean(img)
    sigma = (local_mean(img * img) - mu * mu).abs().sqrt()  # abs: rounding can make it negative
    return ((img - mu) / (sigma + STABILITY))[:, 0]


def neighbour_products(m: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The products of each MSCN coefficient with its right, lower, lower-right and upper-right
    neighbour (horizontal, vertical, main and secondary diagonal), each flattened to (N, M)."""
    pairs = (m[:, :, :-1] * m[:, :, 1:], m[:, :-1, :] * m[:, 1:, :],
             m[:, :-1, :-1] * m[:, 1:, 1:], m[:, 1:, :-1] * m[:, :-1, 1:])
    return tuple(p.flatten(1) for p in pairs)


def _moment_ratio(alpha: torch.Tensor) -> torch.Tensor:
    """Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)): E|X|^2 / E[X^2] of a GGD of shape a, increasing
    in a (0 at 0, 1/2 for Laplace, 2/pi for Gauss, 3/4 at infinity)."""
    return torch.exp(2 * torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha))


def shape_from_ratio(ratio: torch.Tensor) -> torch.Tensor:
    """The grid shape a (0.2 .. 10, step 0.001) whose moment ratio is nearest to `ratio`
    (BRISQUE's lookup; a binary search, since the ratio increases with a)."""
    start, end, step = ALPHA_GRID
    n = int(round((end - start) / step)) + 1
    grid = start + step * torch.arange(n, dtype=torch.float64, device=ratio.device)
    values = _moment_ratio(grid)
    ratio = ratio.to(torch.float64).contiguous()
    i = torch.searchsorted(values, ratio).clamp(1, n - 1)
    nearer_lower = ratio - values[i - 1] <= values[i] - ratio
    return grid[torch.where(nearer_lower, i - 1, i)]


def ggd_fit(v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(shape, variance) of a zero-mean generalised Gaussian fitted to each row of (N, M)
    samples by moment matching: the shape from E|v|^2 / E[v^2], the variance E[v^2]."""
    var = (v * v).mean(1)
    return shape_from_ratio(v.abs().mean(1) ** 2 / var.clamp_min(_TINY)), var


def aggd_fit(v: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """(shape, mean, left variance, right variance) of an asymmetric generalised Gaussian
    fitted to each row of (N, M) samples (BRISQUE's estimator; the right side includes 0 as
    in the official code). A side without samples gets variance 0."""
    left = v < 0
    sq = v * v
    n_left = left.sum(1)
    var_l = (sq * left).sum(1) / n_left.clamp_min(1)
    var_r = (sq * ~left).sum(1) / (v.shape[1] - n_left).clamp_min(1)
    sd_l, sd_r = var_l.sqrt(), var_r.sqrt()
    r_hat = v.abs().mean(1) ** 2 / sq.mean(1).clamp_min(_TINY)
    # r_hat (g^3 + 1)(g + 1) / (g^2 + 1)^2 with g = sd_l / sd_r, written without dividing by sd_r
    r_norm = r_hat * (sd_l ** 3 + sd_r ** 3) * (sd_l + sd_r) / ((var_l + var_r) ** 2).clamp_min(_TINY)
    alpha = shape_from_ratio(r_norm)
    # mean = (beta_r - beta_l) Gamma(2/a) / Gamma(1/a), beta = sd sqrt(Gamma(1/a) / Gamma(3/a))
    log_scale = 0.5 * (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha))
    mean = (sd_r - sd_l) * torch.exp(log_scale + torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha))
    return alpha, mean, var_l, var_r


def nss_features(x: torch.Tensor) -> torch.Tensor:
    """(N, 18) float64 BRISQUE features (FEATURE_NAMES) of (N, 1 or 3, H, W) images in [0, 1],
    H, W >= 2; all are functions of the MSCN map, so they are the same on the [0, 255] scale
    with BRISQUE's constant 1."""
    if x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"x: NSS needs images of at least 2x2 pixels, got {tuple(x.shape[-2:])}")
    m = mscn(to_grey(x.detach().to(torch.float64)))
    feats = list(ggd_fit(m.flatten(1)))
    for product in neighbour_products(m):
        feats.extend(aggd_fit(product))
    return torch.stack(feats, 1)


class NSS(Detector):
    """NSS: BRISQUE features, min-max scaled to [-1, 1] on the training features, and
    sklearn's SVC(C, kernel="sigmoid", gamma) trained on clean (0) against adversarial (1)
    features; score = the SVC's decision_function (> 0: the adversarial side).

    Options: C = 10 and gamma = 0.01 (the official values; its per-data-set values are
    unused there too), batch_size = images per feature batch.
    """
    name = "nss"
    supervised = True
    differentiable = False

    def __init__(self, C: float = 10.0, gamma: float = 0.01, batch_size: int = 512):
        super().__init__()
        self.C = positive(C, "C")
        self.gamma = positive(gamma, "gamma")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.svc = None
        self.low: Optional[torch.Tensor] = None
        self.span: Optional[torch.Tensor] = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 18) NSS features of x on the CPU, in batches of batch_size."""
        with torch.no_grad():
            return torch.cat([nss_features(x[i:i + self.batch_size]).cpu()
                              for i in range(0, x.shape[0], self.batch_size)])

    def _scaled(self, feats: torch.Tensor) -> torch.Tensor:
        """Min-max scaling to [-1, 1] with the training statistics (not clipped, as official)."""
        return -1 + 2 * (feats - self.low) / self.span

    def _fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: Optional[torch.Tensor],
             generator: torch.Generator) -> None:
        from sklearn.svm import SVC

        feats = torch.cat([self.features(x), self.features(x_adv)])
        labels = torch.cat([torch.zeros(x.shape[0]), torch.ones(x_adv.shape[0])]).long()
        self.low = feats.min(0).values
        span = feats.max(0).values - self.low
        self.span = torch.where(span > 0, span, torch.ones_like(span))
        self.svc = SVC(C=self.C, kernel="sigmoid", gamma=self.gamma)
        self.svc.fit(self._scaled(feats).numpy(), labels.numpy())

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.svc.decision_function(self._scaled(self.features(x)).numpy())
        return torch.as_tensor(scores, dtype=x.dtype, device=x.device)
