"""The model's side of an attack step: forward in eval mode, input-only gradient, autocast."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, NamedTuple, Optional, Tuple

import torch
from torch import nn

from .rows import maths_dtype


@contextmanager
def eval_mode(model: nn.Module):
    """Puts every submodule in eval mode (BatchNorm statistics, dropout off) and restores each
    submodule's own mode afterwards, also when the attack raises."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        # Pre-order: a parent's train() sets its children, then each child's own call wins.
        for module, training in modes:
            module.train(training)


class ModelOutput(NamedTuple):
    """One forward of the model: the logits (the first output, which decides success) and the
    whole output (the logits alone, or the tuple/list the model returned), every tensor in
    maths_dtype(x), for losses of the whole output."""

    logits: torch.Tensor
    raw: Any


def _convert(out, dtype: torch.dtype):
    if isinstance(out, torch.Tensor):
        return out.to(dtype)
    if isinstance(out, (tuple, list)):
        return type(out)(_convert(o, dtype) for o in out)
    return out


class ModelRunner:
    """Calls the model on attack rows.

    The model returns (N, classes) logits, or a tuple/list whose first element they are (the
    other elements reach custom losses only: e.g. a CIFS network's probe logits). Everything
    comes back as float32 (float64 for float64 inputs) whatever the autocast dtype, so every
    loss is computed in that type.
    Gradients are taken with torch.autograd.grad with respect to the input only:
    autograd then skips the weight-gradient work and parameters never get a .grad.
    graph_safe turns off autocast's weight cast cache, which CUDA-graph capture cannot use.
    """

    def __init__(self, model: nn.Module, autocast: Optional[torch.dtype] = None, graph_safe: bool = False,
                 classes_needed: int = 0):
        self.model = model
        self.autocast = autocast
        self.graph_safe = graph_safe
        # The attack's labels are class indices below this: the logits must have that many classes.
        self.classes_needed = classes_needed

    def _forward(self, x: torch.Tensor) -> ModelOutput:
        if self.autocast is None:
            out = self.model(x)
        else:
            with torch.autocast(x.device.type, dtype=self.autocast, cache_enabled=not self.graph_safe):
                out = self.model(x)
        # one conversion of everything the model returned; the logits are its first element
        raw = _convert(out, maths_dtype(x))
        logits = raw[0] if isinstance(raw, (tuple, list)) and len(raw) > 0 else raw
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"model must return (N, classes) logits (or a tuple starting with them) for "
                             f"N={x.shape[0]} inputs, got {got}")
        if logits.shape[1] < self.classes_needed:
            raise ValueError(f"y (or targets) must be class indices in [0, {logits.shape[1]}) for a model with "
                             f"{logits.shape[1]} classes, got the label {self.classes_needed - 1}")
        return ModelOutput(logits, raw)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits in maths_dtype(x), no graph kept."""
        return self.output(x).logits

    def output(self, x: torch.Tensor) -> ModelOutput:
        """The whole output, no graph kept."""
        with torch.no_grad():
            return self._forward(x)

    def loss_and_grad(self, x: torch.Tensor, loss_fn: Callable[[ModelOutput], torch.Tensor]
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, per-row loss, d sum(loss) / d x): logits and loss detached, in
        maths_dtype(x); the gradient in x's dtype and layout."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = self._forward(x_in)
            loss = loss_fn(out)
            (grad,) = torch.autograd.grad(loss.sum(), x_in)
        return out.logits.detach(), loss.detach(), grad

    def logits_through(self, x: torch.Tensor) -> torch.Tensor:
        """The logits at x with the graph from x kept (x a function of the attack's own
        variables: gradients reach those, never the parameters unless asked)."""
        with torch.enable_grad():
            return self._forward(x).logits

    def logits_with_graph(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x_in, logits): the logits at x_in (a leaf copy of x that requires grad) with their
        graph kept, for input gradients taken afterwards (torch.autograd.grad, input only)."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            return x_in, self._forward(x_in).logits
