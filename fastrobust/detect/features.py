"""A classifier's logits and the outputs of named layers in one forward pass (forward hooks),
with the autograd graph kept when the input requires it (the differentiable scores)."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import nn

from ..eval.inference import logits_of

PENULTIMATE = "penultimate"  # the input of the classifier's last nn.Linear


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("layers: the classifier has no nn.Linear, so it has no 'penultimate' features; name "
                         "the layers")
    return linears[-1]


def check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    modules = dict(model.named_modules())
    bad = [l for l in layers if l != PENULTIMATE and (not l or l not in modules)]
    if bad:
        names = ", ".join(n for n in modules if n)
        raise ValueError(f"layers: the classifier has no submodule {bad[0]!r} (its submodules: {names})")


def logits_and_features(model: nn.Module, x: torch.Tensor, layers: Sequence[str]
                        ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """(logits, {layer: its output flattened to (N, d)}); layer "penultimate" is the input of
    the last nn.Linear. Gradients flow when x requires them."""
    logits, maps = layer_maps(model, x, layers)
    return logits, {layer: out.flatten(1) for layer, out in maps.items()}


def batched_features(model: nn.Module, x: torch.Tensor, layers: Sequence[str], batch_size: int = 512
                     ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """logits_and_features without gradients, in batches (fitting on a whole training set)."""
    outs = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            outs.append(logits_and_features(model, x[i:i + batch_size], layers))
    return torch.cat([o[0] for o in outs]), {l: torch.cat([o[1][l] for o in outs]) for l in layers}


def layer_maps(model: nn.Module, x: torch.Tensor, layers: Sequence[str]
               ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """(logits, {layer: its output as the layer returns it}), by forward hooks in one pass:
    logits_and_features without the flattening, for detectors that read the spatial layout of conv maps (SFAD's heads run
    convolutions on them). "penultimate" is the input of the last nn.Linear, as there.
    Gradients flow when x requires them."""
    check_layers(model, layers)
    modules = dict(model.named_modules())
    store: Dict[str, torch.Tensor] = {}
    handles = []
    try:
        for layer in layers:
            if layer == PENULTIMATE:
                handles.append(last_linear(model).register_forward_pre_hook(
                    lambda m, args, layer=layer: store.__setitem__(layer, args[0])))
            else:
                handles.append(modules[layer].register_forward_hook(
                    lambda m, args, out, layer=layer: store.__setitem__(layer, logits_of(out))))
        logits = logits_of(model(x))
    finally:
        for h in handles:
            h.remove()
    return logits, {layer: store[layer] for layer in layers}
