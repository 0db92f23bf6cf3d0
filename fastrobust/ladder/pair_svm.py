"""LADDER's boundary directions (spec/methods-more.md §5.2): one linear SVM with attention per
pair of classes, on the frozen classifier's latent codes, all pairs trained at once as one
batched model (the official code trains each pair in its own loop, SGD with batch 1).

    svm = PairSVM(latent_dim, num_classes)
    fit_pair_svm(svm, h_train, y_train, per_class=200)
    d = svm.direction(source, target)             # (d,): +w towards the target class
    a = svm.attention(h, source, target)          # (N, d) in [1, e]

Pair (s, t), s < t: score(h) = w . (a(h) * h) + b with a(h) = exp(softmax(tanh(A h + c))) over
the d latent units (exp after softmax keeps the weights in [1, e]); class t is +1, class s -1.
Loss per pair (official): C * mean(max(0, 1 - y score)) + mean(w^2), C = 0.01. The SVM of
(t, s) is the same with the signs of w and b swapped, so only unordered pairs are trained and
the direction towards s is -w (the official code stores [-w, w]).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class PairSVM(nn.Module):
    """The attention SVMs of `pairs` (default: every s < t of num_classes), batched: A (P, d, d),
    c (P, d), w (P, d), b (P), initialised as the official 1x1 convolution and linear layer
    (uniform in +-1/sqrt(d))."""

    def __init__(self, latent_dim: int, num_classes: int, pairs: Optional[Sequence[Tuple[int, int]]] = None):
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be an integer >= 1, got {latent_dim!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if pairs is None:
            pairs = [(s, t) for s in range(num_classes) for t in range(s + 1, num_classes)]
        pairs = [tuple(p) for p in pairs]
        if not pairs or any(len(p) != 2 or not 0 <= p[0] < p[1] < num_classes for p in pairs):
            raise ValueError(f"pairs must be (s, t) with 0 <= s < t < num_classes, got {pairs!r}")
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.pairs: List[Tuple[int, int]] = pairs
        p, d = len(pairs), latent_dim
        bound = 1 / math.sqrt(d)
        self.A = nn.Parameter(torch.empty(p, d, d).uniform_(-bound, bound))
        self.c = nn.Parameter(torch.empty(p, d).uniform_(-bound, bound))
        self.w = nn.Parameter(torch.empty(p, d).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.empty(p).uniform_(-bound, bound))

    def pair_index(self, source: int, target: int) -> Tuple[int, float]:
        """(index of the pair {source, target}, +1 if target is its positive class else -1)."""
        key = (min(source, target), max(source, target))
        try:
            return self.pairs.index(key), 1.0 if target > source else -1.0
        except ValueError:
            raise ValueError(f"no SVM for the classes {source} and {target} (pairs: {self.pairs})") from None

    def batched_attention(self, h: torch.Tensor) -> torch.Tensor:
        """h (P, N, d) -> a (P, N, d): each pair's attention on its own rows."""
        return torch.exp(F.softmax(torch.tanh(torch.baddbmm(self.c.unsqueeze(1), h, self.A.transpose(1, 2))), dim=-1))

    def batched_scores(self, h: torch.Tensor) -> torch.Tensor:
        """h (P, N, d) -> scores (P, N)."""
        return (self.batched_attention(h) * h * self.w.unsqueeze(1)).sum(-1) + self.b.unsqueeze(1)

    def attention(self, h: torch.Tensor, source: int, target: int) -> torch.Tensor:
        """a(h) (N, d) of the SVM of {source, target}."""
        i, _ = self.pair_index(source, target)
        return torch.exp(F.softmax(torch.tanh(h @ self.A[i].T + self.c[i]), dim=-1))

    def score(self, h: torch.Tensor, source: int, target: int) -> torch.Tensor:
        """(N,) scores oriented towards `target` (> 0: the target's side)."""
        i, sign = self.pair_index(source, target)
        return sign * ((self.attention(h, source, target) * h * self.w[i]).sum(-1) + self.b[i])

    def direction(self, source: int, target: int, normalize: bool = False) -> torch.Tensor:
        """(d,) the direction from source towards target: +-w (the code's), or w/||w|| with
        normalize=True (the paper's)."""
        i, sign = self.pair_index(source, target)
        w = sign * self.w[i]
        return w / w.norm().clamp_min(1e-12) if normalize else w


def pair_batches(svm: PairSVM, h: torch.Tensor, y: torch.Tensor, per_class: int,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(H (P, 2m, d), labels (P, 2m) of +-1): for each pair, m = min(per_class, the fewest images
    of a class) random latents of each class (official: the first 200 images per class)."""
    counts = torch.bincount(y, minlength=svm.num_classes)
    m = min(per_class, int(counts.min()))
    if m < 1:
        raise ValueError(f"y: every class needs at least one image, got counts {counts.tolist()}")
    chosen = {}
    for k in range(svm.num_classes):
        rows = (y == k).nonzero()[:, 0]
        perm = torch.randperm(rows.numel(), generator=generator, device="cpu")[:m].to(rows.device)
        chosen[k] = rows[perm]
    hs, labels = [], []
    for s, t in svm.pairs:
        hs.append(torch.cat((h[chosen[s]], h[chosen[t]])))
        labels.append(torch.cat((-torch.ones(m), torch.ones(m))))
    return torch.stack(hs), torch.stack(labels).to(h.device, h.dtype)


def pair_svm_loss(svm: PairSVM, H: torch.Tensor, labels: torch.Tensor, C: float = 0.01) -> torch.Tensor:
    """The sum over pairs of C * mean(hinge) + mean(w^2): each pair's gradient is its own."""
    hinge = F.relu(1 - labels * svm.batched_scores(H)).mean(1)
    return (C * hinge + svm.w.pow(2).mean(1)).sum()


def fit_pair_svm(svm: PairSVM, h: torch.Tensor, y: torch.Tensor, *, per_class: int = 200, epochs: int = 200,
                 lr: float = 0.01, C: float = 0.01, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Trains every pair at once by full-batch Adam on pair_svm_loss (the official objective;
    its optimiser was SGD with batch 1 for 10 epochs per pair). Returns each pair's training
    accuracy (P,)."""
    H, labels = pair_batches(svm, h.detach(), y, per_class, generator)
    opt = torch.optim.Adam(svm.parameters(), lr=lr)
    for _ in range(epochs):
        loss = pair_svm_loss(svm, H, labels, C)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((svm.batched_scores(H) > 0).to(labels.dtype) * 2 - 1 == labels).float().mean(1)
