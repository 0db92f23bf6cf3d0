"""LADDER's boundary-guided examples (spec/methods-more.md §5.3): move each image's latent code
along its class pair's SVM direction, weighted by the SVM's attention, and decode.

    x_new, targets = boundary_examples(classifier, decoder, svm, x, y, eta=5.0, generator=g)
    x_new, targets, etas = flip_search(classifier, decoder, svm, x, y, etas=(0.5, 2, 5, 10), generator=g)
    fidelity = label_fidelity(other_model, x_new, y)

h' = h + eta * a(h) * d, d = +w of the SVM of (source, target) towards the target (the code's
raw w; normalize=True: w/||w||, the paper's), target drawn uniformly among the other classes
(the official code's effective choice). The generated image keeps the source label: check with
label_fidelity how many an independent model still gives that label (large eta makes real
target-class images).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..eval.inference import logits_of
from .latent import latent_features
from .pair_svm import PairSVM


def random_targets(y: torch.Tensor, num_classes: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A class != y per row, uniform among the others."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator, device="cpu").to(y.device)
    return (y + shift) % num_classes


def move_latents(svm: PairSVM, h: torch.Tensor, y: torch.Tensor, targets: torch.Tensor, eta,
                 normalize: bool = False) -> torch.Tensor:
    """h + eta * a(h) * d(y -> target), row by row (eta a number or an (N,) tensor)."""
    eta = torch.as_tensor(eta, dtype=h.dtype, device=h.device).expand(h.shape[0])
    out = h.clone()
    pairs = torch.stack((y, targets), 1)
    with torch.no_grad():
        for s, t in torch.unique(pairs, dim=0).tolist():
            rows = ((y == s) & (targets == t)).nonzero()[:, 0]
            step = svm.attention(h[rows], s, t) * svm.direction(s, t, normalize)
            out[rows] = h[rows] + eta[rows, None] * step
    return out


def boundary_examples(classifier: nn.Module, decoder: nn.Module, svm: PairSVM, x: torch.Tensor, y: torch.Tensor,
                      eta: float, *, targets: Optional[torch.Tensor] = None, normalize: bool = False,
                      layer: Optional[str] = None,
                      generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(decoded images (detached), target classes) at one eta."""
    targets = random_targets(y, svm.num_classes, generator) if targets is None else targets
    h = latent_features(classifier, x, layer)
    with torch.no_grad():
        return decoder(move_latents(svm, h, y, targets, eta, normalize)), targets


def flip_search(classifier: nn.Module, decoder: nn.Module, svm: PairSVM, x: torch.Tensor, y: torch.Tensor,
                etas: Sequence[float], *, targets: Optional[torch.Tensor] = None, normalize: bool = False,
                layer: Optional[str] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row the smallest eta of the (ascending) grid whose decoded image the classifier no
    longer gives the source label; rows that never flip take the largest. Returns (images,
    targets, eta per row)."""
    etas = sorted(float(e) for e in etas)
    if not etas:
        raise ValueError("etas must hold at least one step size")
    targets = random_targets(y, svm.num_classes, generator) if targets is None else targets
    h = latent_features(classifier, x, layer)
    chosen = torch.full((x.shape[0],), etas[-1], dtype=h.dtype, device=h.device)
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=h.device)
    with torch.no_grad():
        for eta in etas:
            images = decoder(move_latents(svm, h, y, targets, eta, normalize))
            out = classifier(images)
            flipped = logits_of(out).argmax(1) != y
            new = flipped & ~found
            chosen[new] = eta
            found |= flipped
        images = decoder(move_latents(svm, h, y, targets, chosen, normalize))
    return images, targets, chosen


def label_fidelity(judge: nn.Module, images: torch.Tensor, source: torch.Tensor) -> float:
    """The fraction of the generated images that `judge` (an independent model) still gives
    their source label."""
    with torch.no_grad():
        out = judge(images)
    return (logits_of(out).argmax(1) == source).float().mean().item()
