"""CIFS, channel-wise importance-based feature selection (Yan et al., ICML 2021), as a layer,
and the loss that trains a network with CIFS layers.

A CIFS layer puts a probe (a small classifier on the globally average-pooled feature) on a
feature map f of shape (B, C, H, W) and returns (f * m, probe logits), with the channel mask

    m = scale * softmax_c(r / temperature),   r = d(z_t1 + z_t2) / d GAP(f), f detached,

where z are the probe's logits, t1 is the label in train mode (the probe's top-1 prediction in
eval mode) and t2 the second of the probe's top-2 predictions in both modes, even when it is
the label. r has a closed form for both probe kinds (fastrobust.ops.linear_relevance and
mlp_relevance), so the layer needs no double backward and works under torch.no_grad and
torch.inference_mode. No gradient reaches f through m; the probe weights get the second-order
gradient through m, as with the official code's autograd.grad(create_graph=True).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.cifs_layer import cifs_layer, global_pool

PROBES = ("linear", "mlp")


def _check_int(value, name: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_number(value, name: str, minimum: Optional[float] = None, inclusive: bool = False) -> float:
    """value as a float; it must be a finite real number, > minimum (>= with inclusive)."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    bound = ""
    if minimum is not None:
        bound = f" {'>=' if inclusive else '>'} {minimum:g}"
        ok = ok and (value >= minimum if inclusive else value > minimum)
    if not ok:
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


class GlobalAvgPool(nn.Module):
    """(B, C, H, W) -> (B, C) spatial mean, as the CIFS layer pools (nn.AdaptiveAvgPool2d(1)
    then nn.Flatten, computed by the extension's CPU kernel where no graph is recorded)."""

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return global_pool(feat)


class CIFS(nn.Module):
    """CIFS layer on a (B, channels, H, W) feature; forward(feat, labels=None) returns
    (feat * m, probe_logits (B, num_classes)).

    probe:       "linear": GAP -> Linear(channels, num_classes);
                 "mlp":    GAP -> Linear(channels, hidden) -> Softplus(beta) -> Linear(hidden, num_classes).
    hidden=128, beta=5.0: the mlp probe of the official ResNet-18 (hidden is unused by "linear").
                 Where beta * u > 20 torch's Softplus is the identity; the relevance's closed
                 form uses the same derivative (1 there, sigmoid(beta * u) elsewhere).
    temperature=1.0, scale=1.0: m = scale * softmax(r / temperature) over channels; the mask sums to
                 `scale`, so it shrinks the feature by about C / scale on average. scale=1 is the
                 official code as it stands (HEAD 2e68025, October 2021): plain softmax. An older
                 commit (2d8217c) multiplied the softmax by 2 and a later one commented the factor
                 out; pass scale=2.0 to reproduce models trained with that commit.
    labels:      int64 (B,) class indices in [0, num_classes), required in train mode (t1 = the
                 label); ignored in eval mode.

    The probe logits come from the non-detached feature, so a loss on them (cifs_loss) trains
    the backbone too. `self.head` holds the probe's layers after pooling (nn.Linear weights in
    the usual (out, in) layout); `probe_module()` gives the whole probe as a plain module on
    the same parameters.
    """

    def __init__(self, channels: int, num_classes: int, probe: str = "linear", hidden: int = 128,
                 beta: float = 5.0, temperature: float = 1.0, scale: float = 1.0, device=None, dtype=None):
        super().__init__()
        self.channels = _check_int(channels, "channels", 1)
        # The mask needs the probe's top-2 classes.
        self.num_classes = _check_int(num_classes, "num_classes", 2)
        if probe not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
        self.probe = probe
        self.hidden = _check_int(hidden, "hidden", 1)
        self.beta = check_number(beta, "beta", 0)
        self.temperature = check_number(temperature, "temperature", 0)
        self.scale = check_number(scale, "scale")
        factory = {"device": device, "dtype": dtype}
        if probe == "linear":
            self.head = nn.Sequential(nn.Linear(channels, num_classes, **factory))
        else:
            self.head = nn.Sequential(nn.Linear(channels, hidden, **factory), nn.Softplus(beta=self.beta),
                                      nn.Linear(hidden, num_classes, **factory))

    def probe_module(self) -> nn.Module:
        """The probe as the official code builds it, GAP -> flatten -> head, sharing this
        layer's parameters: a module mapping (B, C, H, W) to (B, num_classes) logits. The
        pooling is the layer's own (GlobalAvgPool), so the logits are the layer's bit for bit."""
        return nn.Sequential(GlobalAvgPool(), *self.head)

    def forward(self, feat: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if feat.dim() != 4 or feat.shape[1] != self.channels:
            raise ValueError(f"feat must have shape (B, {self.channels}, H, W) for CIFS({self.channels}, "
                             f"{self.num_classes}), got {tuple(feat.shape)}")
        if self.training and labels is None:
            raise ValueError("labels must be given in train mode: CIFS takes the label as the first class "
                             "of the mask (call model.eval() to use the probe's top-1 prediction instead)")
        return cifs_layer(feat, list(self.head.parameters()), labels if self.training else None, probe=self.probe,
                          beta=self.beta, temperature=self.temperature, scale=self.scale)

    def extra_repr(self) -> str:
        return (f"{self.channels}, {self.num_classes}, probe={self.probe!r}, temperature={self.temperature}, "
                f"scale={self.scale}")


def cifs_loss(final_logits: torch.Tensor, probe_logits_list: Sequence[torch.Tensor], y: torch.Tensor,
              beta: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """The official joint loss of a network with L_p CIFS probes:

        L = 3 / (beta + 1) * [ CE(final, y) + (beta / L_p) * sum_l CE(p_l, y) ]

    With beta=2 and two probes (ResNet18CIFS) L = CE_final + CE_p1 + CE_p2; beta=0 leaves
    3 * CE_final. reduction: "mean" over the batch (training) or "none" (per sample, the
    form an attack maximises).
    """
    beta = check_number(beta, "beta", 0, inclusive=True)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    probes = list(probe_logits_list)
    if not probes or not all(isinstance(p, torch.Tensor) for p in probes):
        raise ValueError("probe_logits_list must be a non-empty sequence of (B, classes) tensors")
    for i, p in enumerate(probes):
        if p.shape != final_logits.shape:
            raise ValueError(f"probe_logits_list[{i}] has shape {tuple(p.shape)}; final_logits has "
                             f"{tuple(final_logits.shape)}")
    probe_ce = sum(F.cross_entropy(p, y, reduction=reduction) for p in probes)
    loss = F.cross_entropy(final_logits, y, reduction=reduction) + (beta / len(probes)) * probe_ce
    return 3.0 / (beta + 1.0) * loss
