"""HGD's guidance losses (Liao et al., CVPR 2018; the official inception.py `DenoiseLoss`,
spec/methods-more.md §4.2): how far the frozen classifier's view of the denoised adversarial
image is from its view of the clean image.

    loss = guidance_loss("feature", classifier, x_hat, x_clean, y)          # FGD
    loss = guidance_loss("logits", classifier, x_hat, x_clean, y)           # LGD

    pixel    mean |x_hat - x_clean|                          (PGD in the paper: pixel-guided)
    feature  mean |h(x_hat) - h(x_clean)|, h the output of a named layer of the classifier
             (default: its last "layerN" stage, else the last module giving a 4-D output)
    logits   mean |f(x_hat) - f(x_clean)|
    class    CE(f(x_hat), y)                                  (CGD)

The official loss is mean |a - b|^n / n with n = 1 (no hard mining, no normalisation). The
clean side is computed without gradients; the classifier runs as it is (HGD keeps it in eval
mode: fastrobust.models.Denoised does), and its parameters get no gradient from these losses
when they are frozen.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from .recipes.losses import output_logits

GUIDES = ("pixel", "feature", "logits", "class")


def default_feature_layer(classifier: nn.Module, example: Optional[torch.Tensor] = None) -> str:
    """The layer the feature guide reads: the classifier's last child named layerN (the
    models of fastrobust.models: layer4 of a ResNet-18, layer3 of a WideResNet, layer2 of
    SmallCNN); otherwise, with an example input, the last module (in execution order) whose
    output is 4-D. ValueError when neither finds one."""
    stages = [(int(m.group(1)), name) for name, _ in classifier.named_children()
              if (m := re.fullmatch(r"layer(\d+)", name))]
    if stages:
        return max(stages)[1]
    if example is None:
        raise ValueError("layer: the classifier has no child named layerN; name the feature layer "
                         f"(one of: {', '.join(n for n, _ in classifier.named_modules() if n)})")
    order: List[str] = []
    hooks = []
    for name, module in classifier.named_modules():
        if name:
            hooks.append(module.register_forward_hook(
                lambda mod, args, out, name=name: order.append(name)
                if isinstance(out, torch.Tensor) and out.dim() == 4 else None))
    try:
        with torch.no_grad():
            classifier(example[:1])
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError("layer: no module of the classifier gives a 4-D output; name the feature layer")
    return order[-1]


@contextmanager
def feature_tap(classifier: nn.Module, layer: str) -> Iterator[Dict[str, torch.Tensor]]:
    """Within the block, every forward of `classifier` stores the output of its submodule
    `layer` in the yielded dict under "features"."""
    modules = dict(classifier.named_modules())
    if layer not in modules or not layer:
        raise ValueError(f"layer: the classifier has no submodule {layer!r}")
    store: Dict[str, torch.Tensor] = {}
    handle = modules[layer].register_forward_hook(lambda mod, args, out: store.__setitem__("features", out))
    try:
        yield store
    finally:
        handle.remove()


def guidance_loss(guide: str, classifier: nn.Module, denoised: torch.Tensor, clean: torch.Tensor,
                  y: Optional[torch.Tensor] = None, layer: Optional[str] = None) -> torch.Tensor:
    """The scalar guidance loss of `guide` (see the module docstring). denoised: D(x_adv),
    differentiable; clean: the clean images; y: labels (the class guide only); layer: the
    feature guide's layer (default: default_feature_layer)."""
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {', '.join(GUIDES)}, got {guide!r}")
    if denoised.shape != clean.shape:
        raise ValueError(f"denoised and clean must have the same shape, got {tuple(denoised.shape)} and "
                         f"{tuple(clean.shape)}")
    if guide == "pixel":
        return (denoised - clean).abs().mean()
    if guide == "class":
        if y is None or y.shape != (denoised.shape[0],):
            raise ValueError(f"y: the class guide needs one label per image, got "
                             f"{None if y is None else tuple(y.shape)}")
        return F.cross_entropy(output_logits(classifier(denoised)).float(), y)
    if guide == "logits":
        with torch.no_grad():
            target = output_logits(classifier(clean))
        return (output_logits(classifier(denoised)) - target).float().abs().mean()
    layer = layer or default_feature_layer(classifier, clean)
    with feature_tap(classifier, layer) as tap:
        with torch.no_grad():
            classifier(clean)
            target = tap["features"]
        classifier(denoised)
        features = tap["features"]
    return (features - target).float().abs().mean()
