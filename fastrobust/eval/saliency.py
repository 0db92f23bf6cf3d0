"""Saliency maps of several models side by side, for evaluation reports.

    input_gradient_saliency(model, x, y)      |d CE(f(x), y) / dx|, max over channels, each
                                              image scaled to [0, 1]; (B, 1, H, W), detached
    saliency_figure(models, x, y, path)       PNG grid: one row per image; the input, then per
                                              model its input-gradient map and (optionally)
                                              its perturbation mask (regularizers.
                                              perturbation_saliency)

Both maps are taken for the true label y (the loss of the true class; the mask that preserves
the true class), so models are compared on the same question. The figure is drawn on
matplotlib's Agg canvas like fastrobust.eval.plots (pyplot and the global backend untouched).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._checks.common import require_tensor
from ..regularizers import perturbation_saliency
from .inference import logits_of
from .plots import _figure, _save

PathLike = Union[str, Path]

MAX_ROWS = 32  # one row per image: beyond this the figure is unreadable (and huge)


def _check_images(x, y, fn: str) -> None:
    require_tensor(x, "x")
    require_tensor(y, "y")
    if x.dim() != 4:
        raise ValueError(f"{fn}: x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{fn}: x must be a floating-point tensor (images in [0, 1]), got {x.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{fn}: y must have shape ({x.shape[0]},) (one label per image of x), "
                         f"got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{fn}: y must hold integer class labels, got {y.dtype}")


def input_gradient_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The input-gradient saliency map of each image: |d CE(model(x), y) / dx|, reduced over
    the channels by their maximum, then divided by each image's largest value, so every map
    lies in [0, 1] with its peak at 1 (an all-zero gradient stays all zero, no NaN).

    Why the max over channels: a pixel counts as salient when any one of its colour channels
    moves the loss, and the map keeps the scale of the strongest channel (a sum, as
    regularizers.top_gradient_mask uses for ranking, would favour pixels where all channels
    agree). For grayscale inputs both choices are the same.

    The loss is summed over the batch, so each image's gradient is its own (no 1/B factor).
    The model runs as given (callers choose eval or train mode; it is not changed); a tuple
    output's first element is the logits. The gradient is taken with torch.autograd.grad with
    respect to x only, so no parameter gets a .grad. A model whose output does not depend on x
    through autograd (e.g. computed under no_grad) gets an all-zero map: it gives no gradient.

    x: images (B, C, H, W), floating point; y: integer labels (B,). Returns (B, 1, H, W) in x's
    dtype, detached, on x's device.
    """
    _check_images(x, y, "input_gradient_saliency")
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_of(model(xg))
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        loss = F.cross_entropy(logits, y.long(), reduction="sum")
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, [xg], allow_unused=True)
        else:
            grad = None
    if grad is None:
        grad = torch.zeros_like(xg)
    saliency = grad.detach().abs().amax(dim=1, keepdim=True).to(x.dtype)
    peak = saliency.amax(dim=(2, 3), keepdim=True)
    # saliency <= peak, so an all-zero map divides 0 by a tiny number: 0, not NaN.
    return saliency / peak.clamp_min(torch.finfo(saliency.dtype).tiny)


def _model_device_dtype(model: nn.Module, x: torch.Tensor) -> Tuple[torch.device, torch.dtype]:
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        return x.device, x.dtype
    return param.device, param.dtype


def _image(ax, img: torch.Tensor) -> None:
    """img (C, H, W) in [0, 1]: grayscale for C = 1, RGB for C = 3."""
    img = img.detach().float().clamp(0, 1).cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")


def _map(ax, m: torch.Tensor, cmap: str) -> None:
    ax.imshow(m.detach().float().cpu()[0].numpy(), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")


def saliency_figure(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, path: PathLike, *,
                    perturbation: bool = True, steps: int = 20, title: Optional[str] = None) -> str:
    """Draw the saliency maps of several models on the same images and save a PNG to path.

    models: {name: model}, in column order (e.g. {"standard": m1, "J-SIGR-style": m2}).
    x: a fixed set of test images (N, C, H, W) in [0, 1], C = 1 (grayscale) or 3 (RGB),
    N <= 32; y: their labels (N,).

    One row per image. Columns: the input (labelled with its true label), then for each model
    its input_gradient_saliency map (labelled with the model's prediction; "wrong" in red when
    it differs from the label) and, with perturbation=True, its perturbation_saliency mask
    (`steps` optimisation steps; 1 = kept, 0 = blurred). Both maps are for the true label and
    lie in [0, 1] (gradient: "inferno", mask: "viridis"). Models run in eval mode for the
    figure; every submodule's train/eval flag is restored afterwards. Inputs are moved to each
    model's device and dtype. Returns the path written.

    steps: perturbation_saliency's Adam steps (its lr 1.0: on 8x8 digits 20 steps give masks
    whose centred cosine similarity with 300 steps' is about 0.9).
    """
    fn = "saliency_figure"
    if not isinstance(models, Mapping):
        raise ValueError(f"{fn}: models must be a mapping of names to nn.Module, got {type(models).__name__}")
    if len(models) == 0:
        raise ValueError(f"{fn}: models is empty; give at least one {{name: nn.Module}}")
    for name, model in models.items():
        if not isinstance(model, nn.Module):
            raise ValueError(f"{fn}: models[{name!r}] must be an nn.Module, got {type(model).__name__}")
    _check_images(x, y, fn)
    n, c = x.shape[0], x.shape[1]
    if n == 0:
        raise ValueError(f"{fn}: x holds no images (N = 0)")
    if n > MAX_ROWS:
        raise ValueError(f"{fn}: x has {n} images, too many rows for one figure (at most {MAX_ROWS}); "
                         f"pass a subset such as x[:8], y[:8]")
    if c not in (1, 3):
        raise ValueError(f"{fn}: x must have 1 (grayscale) or 3 (RGB) channels, got C = {c}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{fn}: steps must be an integer >= 1, got {steps!r}")

    maps_per_model = 2 if perturbation else 1
    columns: List[Tuple[str, str, torch.Tensor]] = []  # (title, cmap, (N, 1, H, W) map)
    predictions: List[torch.Tensor] = []
    for name, model in models.items():
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            device, dtype = _model_device_dtype(model, x)
            xm, ym = x.detach().to(device=device, dtype=dtype), y.to(device=device, dtype=torch.long)
            with torch.no_grad():
                predictions.append(logits_of(model(xm)).argmax(dim=1).cpu())
            label = textwrap.fill(str(name), 18)
            columns.append((f"{label}\ninput gradient", "inferno", input_gradient_saliency(model, xm, ym).cpu()))
            if perturbation:
                mask = perturbation_saliency(model, xm, ym, steps=steps)
                columns.append((f"{label}\nperturbation mask", "viridis", mask.cpu()))
        finally:
            model.train(flags[0][1])  # through train(), so modules that override it see the change
            for m, training in flags:  # then submodules whose flag differed (e.g. frozen BatchNorm)
                if m.training != training:
                    m.training = training

    cell = 1.7
    n_cols = 1 + len(columns)
    fig, axes = _figure((cell * n_cols, cell * n + 0.6), n, n_cols)
    labels = y.detach().cpu().long()
    for i in range(n):
        row = axes[i]
        _image(row[0], x[i])
        row[0].set_ylabel(f"label {int(labels[i])}", fontsize=8)
        for j, (col_title, cmap, maps) in enumerate(columns):
            ax = row[1 + j]
            _map(ax, maps[i], cmap)
            if j % maps_per_model == 0:  # the model's first column carries its prediction
                pred = int(predictions[j // maps_per_model][i])
                wrong = pred != int(labels[i])
                ax.set_xlabel(f"pred {pred}" + (" (wrong)" if wrong else ""), fontsize=7,
                              color="tab:red" if wrong else "black")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("input", fontsize=8)
    for j, (col_title, _, _) in enumerate(columns):
        axes[0][1 + j].set_title(col_title, fontsize=8)
    heading = title or "Saliency for the true label (each map scaled to [0, 1])"
    fig.suptitle(textwrap.fill(heading, max(20, int(11 * cell * n_cols))), fontsize=9)
    return _save(fig, path)
