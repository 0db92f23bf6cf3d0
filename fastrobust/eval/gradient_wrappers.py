"""Wrappers that make a model with missing or random gradients attackable (Athalye et al.
2018, "Obfuscated gradients give a false sense of security"); the gradient-masking checks of
fastrobust.eval.masking say when they are needed.

Wrappers, usable as the model of evaluate()/the attacks (or as evaluate(attack_model=...)):
    BPDA(fn, approx=None)      forward fn(x); backward through approx (identity: straight-through)
    bpda_wrap(model, targets)  a copy of model with the named / typed submodules behind BPDA
    EOT(model, samples)        logits averaged over `samples` draws of a randomised model
"""
from __future__ import annotations

import copy
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn


class BPDA(nn.Module):
    """Backward-pass differentiable approximation (Athalye et al. 2018) of a non-differentiable
    (or gradient-masking) function: the forward is fn(x, ...) exactly; the backward goes through
    approx(x, ...), by default the identity (straight-through: fn(x) ~ x, so fn must return a
    tensor of x's shape). Implemented as approx + (fn - approx).detach(), element-wise for
    tuple/list outputs (approx must then return the same structure, e.g. for a layer that
    returns (features, probe_logits)). fn runs without a graph, so its own parameters get no
    gradient (meant for attacks, not training).

        masked = nn.Sequential(Quantize(), net)
        model_for_attack = nn.Sequential(BPDA(Quantize()), net)   # same outputs, usable gradient
    """

    def __init__(self, fn: Callable[..., Any], approx: Optional[Callable[..., Any]] = None):
        super().__init__()
        if not callable(fn):
            raise TypeError("fn must be callable")
        self.fn = fn
        self.approx = approx

    def forward(self, x: torch.Tensor, *args, **kwargs):
        with torch.no_grad():
            out = self.fn(x, *args, **kwargs)
        smooth = x if self.approx is None else self.approx(x, *args, **kwargs)
        return _straight_through(out, smooth, self.approx is None)

    def extra_repr(self) -> str:
        return "straight-through" if self.approx is None else f"approx={getattr(self.approx, '__name__', self.approx)}"


def _straight_through(out, smooth, identity: bool):
    if isinstance(out, (tuple, list)):
        if not isinstance(smooth, (tuple, list)) or len(smooth) != len(out):
            raise ValueError("BPDA: fn returns a tuple/list; pass approx= returning the same structure")
        return type(out)(_straight_through(o, s, identity) for o, s in zip(out, smooth))
    if not isinstance(out, torch.Tensor):
        return out
    if not isinstance(smooth, torch.Tensor) or smooth.shape != out.shape:
        got = tuple(smooth.shape) if isinstance(smooth, torch.Tensor) else type(smooth).__name__
        raise ValueError(f"BPDA: fn(x) has shape {tuple(out.shape)} but the approximation "
                         f"{'(identity) ' if identity else ''}gives {got}; pass approx= with fn's output shape")
    return smooth + (out.to(smooth.dtype) - smooth).detach()


Targets = Union[str, Sequence[str], Type[nn.Module], Tuple[Type[nn.Module], ...], Callable[[str, nn.Module], bool]]


def bpda_wrap(model: nn.Module, targets: Targets, approx: Optional[Callable] = None, copy_model: bool = True
              ) -> nn.Module:
    """model (a deep copy unless copy_model=False) with each matching submodule replaced by
    BPDA(submodule, approx). targets: a submodule name ("features.0") or a list of names; a
    module type or tuple of types; or a predicate (name, module) -> bool. Forward outputs are
    unchanged; gradients pass the matches as the approximation (straight-through by default).
    E.g. bpda_wrap(model, "purifier") to attack through a non-differentiable input
    purifier (a denoiser, a quantiser, JPEG) as the identity. For a part that returns a tuple
    (a CIFS layer's (features, probe_logits)) pass approx= with the same output structure."""
    model = copy.deepcopy(model) if copy_model else model
    if isinstance(targets, str):
        targets = [targets]
    if isinstance(targets, type) or (isinstance(targets, tuple) and all(isinstance(t, type) for t in targets)):
        types = targets
        match = lambda name, module: isinstance(module, types)  # noqa: E731
    elif callable(targets):
        match = targets
    else:
        names = set(targets)
        missing = names - {n for n, _ in model.named_modules()}
        if missing:
            raise ValueError(f"bpda_wrap: no submodules named {sorted(missing)}")
        match = lambda name, module: name in names  # noqa: E731
    if match("", model):
        return BPDA(model, approx)
    found = []
    for name, module in list(model.named_modules()):
        if name and match(name, module) and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    for name in found:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, BPDA(getattr(parent, attr), approx))
    if not found:
        raise ValueError("bpda_wrap: no submodule matches the targets")
    return model


class EOT(nn.Module):
    """Expectation over transformation (Athalye et al. 2018) for a randomised model: the output
    averaged over `samples` independent forwards, so the attack's gradient is the average
    gradient of the averaged output.

    average: "logits" (mean logits) or "probs" (log of the mean softmax, as logits).
    fold:    True runs the samples as one batch of samples*N rows (the model must draw its
             randomness per row, e.g. per-element noise); False runs `samples` separate
             forwards (for models that draw one random transform per batch).
    A tuple output is averaged element-wise (tensors whose first dimension is the rows).
    """

    def __init__(self, model: nn.Module, samples: int = 8, average: str = "logits", fold: bool = True):
        super().__init__()
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        if average not in ("logits", "probs"):
            raise ValueError(f"average must be 'logits' or 'probs', got {average!r}")
        self.model = model
        self.samples = samples
        self.average = average
        self.fold = bool(fold)

    def _mean(self, outs: List[Any], n: int):
        first = outs[0]
        if isinstance(first, (tuple, list)):
            return type(first)(self._mean([o[i] for o in outs], n) for i in range(len(first)))
        if not isinstance(first, torch.Tensor) or first.dim() == 0 or first.shape[0] != n:
            return first
        stacked = torch.stack(outs)
        if self.average == "probs" and stacked.dim() == 3:
            return stacked.float().softmax(dim=-1).mean(dim=0).clamp_min(1e-30).log().to(first.dtype)
        return stacked.mean(dim=0)

    def forward(self, x: torch.Tensor):
        n, k = x.shape[0], self.samples
        if self.fold and k > 1:
            out = self.model(x.repeat(k, *[1] * (x.dim() - 1)))
            return self._mean(_split_rows(out, k, n), n)
        return self._mean([self.model(x) for _ in range(k)], n)

    def extra_repr(self) -> str:
        return f"samples={self.samples}, average={self.average}, fold={self.fold}"


def _split_rows(out, k: int, n: int) -> List[Any]:
    """A folded output (k*n rows) as a list of k outputs of n rows (other tensors repeated)."""
    if isinstance(out, (tuple, list)):
        parts = [_split_rows(o, k, n) for o in out]
        return [type(out)(p[i] for p in parts) for i in range(k)]
    if isinstance(out, torch.Tensor) and out.dim() > 0 and out.shape[0] == k * n:
        return list(out.reshape(k, n, *out.shape[1:]).unbind(0))
    return [out] * k
