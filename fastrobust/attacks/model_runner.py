"""The model's side of an attack step: forward in eval mode, input-only gradient, autocast."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional, Tuple

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


class ModelRunner:
    """Calls the model on attack rows.

    Logits come back as float32 (float64 for float64 inputs) whatever the autocast dtype, so
    every loss is computed in that type. Gradients are taken with torch.autograd.grad with respect to the input only:
    autograd then skips the weight-gradient work and parameters never get a .grad.
    graph_safe turns off autocast's weight cast cache, which CUDA-graph capture cannot use.
    """

    def __init__(self, model: nn.Module, autocast: Optional[torch.dtype] = None, graph_safe: bool = False):
        self.model = model
        self.autocast = autocast
        self.graph_safe = graph_safe

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast is None:
            out = self.model(x)
        else:
            with torch.autocast(x.device.type, dtype=self.autocast, cache_enabled=not self.graph_safe):
                out = self.model(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model must return (N, classes) logits for N={x.shape[0]} inputs, got {got}")
        return out.to(maths_dtype(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits in maths_dtype(x), no graph kept."""
        with torch.no_grad():
            return self._forward(x)

    def loss_and_grad(self, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, per-row loss, d sum(loss) / d x): logits and loss detached, in
        maths_dtype(x); the gradient in x's dtype and layout."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self._forward(x_in)
            loss = loss_fn(logits)
            (grad,) = torch.autograd.grad(loss.sum(), x_in)
        return logits.detach(), loss.detach(), grad
