"""Sparta-style spatially gated ReLU as a drop-in layer, and tools to put it into models.

    y = relu(x) * 2 * sigmoid(dwconv_k(x) + b)

Weights and bias start at zero, so a fresh Sparta is exactly ReLU (the gate is 1/2 * 2).
This is fastrobust's own definition of a Sparta-style activation; the paper's exact formula
(Guo et al., arXiv 2105.08269) was not available to us.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Union

import torch
from torch import nn

from ..ops.sparta import sparta


class Sparta(nn.Module):
    """Sparta activation over `channels` channels with a `kernel_size` x `kernel_size` gate.

    Input (N, C, H, W); output of the same shape (contiguous). Under autocast the parameters
    are cast to the activation's dtype for the op (gradients still reach the fp32 weights).
    """

    def __init__(self, channels: int, kernel_size: int = 3, device=None, dtype=None):
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels <= 0:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        self.channels = channels
        self.kernel_size = kernel_size
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.zeros(channels, 1, kernel_size, kernel_size, **factory))
        self.bias = nn.Parameter(torch.zeros(channels, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"x must have shape (N, {self.channels}, H, W) for Sparta({self.channels}), "
                f"got {tuple(x.shape)}"
            )
        return sparta(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}"


class SpartaByWidth(nn.Module):
    """Replaces one ReLU module that a model applies to inputs of several widths (as
    torchvision's Bottleneck does with its single `relu`): a Sparta per width."""

    def __init__(self, layers: Mapping[int, Sparta]):
        super().__init__()
        self.layers = nn.ModuleDict({str(c): m for c, m in sorted(layers.items())})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.shape[1]) if x.dim() == 4 else None
        if key not in self.layers:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; this activation has Sparta layers for "
                f"channel counts {sorted(int(k) for k in self.layers)} only"
            )
        return self.layers[key](x)


def _relu_widths(model: nn.Module, example_input) -> Dict[str, set]:
    """Runs the model once and records, for each nn.ReLU, the channel counts of its 4-D
    inputs (and -1 for inputs of any other rank)."""
    seen: Dict[str, set] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU):
            def hook(mod, args, name=name):
                x = args[0]
                seen.setdefault(name, set()).add(x.shape[1] if x.dim() == 4 else -1)
            handles.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def swap_relu(model: nn.Module, example_input, kernel_size: int = 3, shared: bool = False) -> nn.Module:
    """Replaces, in place, every nn.ReLU that the model applies to 4-D (N, C, H, W)
    activations with a Sparta of the right width, and returns the model.

    The widths are found by running the model once on `example_input` (a tensor, or a
    tuple of positional inputs). ReLUs applied only to inputs of another rank (an MLP head)
    stay ReLUs; a ReLU applied to both 4-D and other inputs raises, since it cannot be
    swapped without changing what the model computes. Calls of torch.relu / F.relu inside
    forward() are not modules and are not swapped. A ReLU module that the model calls at
    several places of one width becomes one Sparta called at those places; one called at
    several widths becomes a SpartaByWidth.

    shared=True makes all activations of one width share a single Sparta (one per stage
    width), the arrangement that `save_sparta` / `load_sparta` transfer between models.
    New layers are created on the device and dtype of the model's first parameter.
    """
    widths = _relu_widths(model, example_input)
    param = next(model.parameters(), None)
    factory = {"device": param.device, "dtype": param.dtype} if param is not None else {}
    bank: Dict[int, Sparta] = {}

    def layer(c: int) -> Sparta:
        if shared:
            if c not in bank:
                bank[c] = Sparta(c, kernel_size, **factory)
            return bank[c]
        return Sparta(c, kernel_size, **factory)

    for name, ws in widths.items():
        if ws == {-1}:
            continue
        if -1 in ws:
            raise ValueError(
                f"ReLU '{name}' is applied to both 4-D and other inputs; give the model "
                "separate ReLU modules before swapping"
            )
        if len(ws) == 1:
            new = layer(next(iter(ws)))
        else:
            new = SpartaByWidth({c: layer(c) for c in ws})
        _set_submodule(model, name, new)
    return model


def _sparta_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, Sparta)]


def sparta_state(model: nn.Module) -> Dict[int, Dict[str, torch.Tensor]]:
    """The Sparta parameters of a model, keyed by channel width: {width: {"weight", "bias"}}.

    Each width must have one Sparta (as `swap_relu(..., shared=True)` makes); a model with
    several different Sparta layers of one width raises, since one of them would be lost.
    """
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    owner: Dict[int, Sparta] = {}
    for m in _sparta_layers(model):
        if m.channels in owner and owner[m.channels] is not m:
            raise ValueError(
                f"the model has several Sparta layers of width {m.channels}; per-width "
                "transfer needs one per width (swap_relu(..., shared=True))"
            )
        owner[m.channels] = m
        state[m.channels] = {
            "weight": m.weight.detach().cpu().clone(),
            "bias": m.bias.detach().cpu().clone(),
            "kernel_size": m.kernel_size,
        }
    if not state:
        raise ValueError("the model has no Sparta layers")
    return state


def save_sparta(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Saves the per-width Sparta parameters of `model` to `path` (torch.save)."""
    torch.save({"format": "fastrobust.sparta.v1", "layers": sparta_state(model)}, path)


def load_sparta(model: nn.Module, source, freeze: bool = False) -> nn.Module:
    """Loads per-width Sparta parameters into every Sparta layer of `model` (in place).

    `source` is a path written by `save_sparta` or a dict from `sparta_state`. Every width
    the model uses must be present with the same kernel size. freeze=True stops gradients
    to the loaded parameters (the cross-model transfer setting: train the rest of the net).
    """
    if isinstance(source, (str, os.PathLike)):
        blob = torch.load(source, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != "fastrobust.sparta.v1":
            raise ValueError(f"{os.fspath(source)} is not a file written by save_sparta")
        source = blob["layers"]
    layers = _sparta_layers(model)
    if not layers:
        raise ValueError("the model has no Sparta layers to load into")
    for m in layers:
        if m.channels not in source:
            raise KeyError(f"no Sparta parameters for width {m.channels}; the source has widths {sorted(source)}")
        entry = source[m.channels]
        if int(entry["kernel_size"]) != m.kernel_size:
            raise ValueError(
                f"width {m.channels}: source kernel_size {entry['kernel_size']} != layer's {m.kernel_size}"
            )
        with torch.no_grad():
            m.weight.copy_(entry["weight"])
            m.bias.copy_(entry["bias"])
        m.weight.requires_grad_(not freeze)
        m.bias.requires_grad_(not freeze)
    return model
