"""The activation functions of fastrobust.models, built one module per activation site.

    relu       nn.ReLU: the models' default; computes exactly what F.relu computes
    sparta     fastrobust.nn.Sparta(channels): relu(x) * 2 * sigmoid(dwconv3x3(x) + b), per-channel
               parameters, so every site gets its own layer of its own width (ReLU at initialisation)
    silu       nn.SiLU: x * sigmoid(x)
    softplus   nn.Softplus(beta=SOFTPLUS_BETA): log(1 + exp(beta * x)) / beta
    gelu       nn.GELU: x * Phi(x) (the exact erf form)

silu, gelu and softplus are the smooth activations of the FGSM-AT bag of tricks (Li, Liu,
Wang, Zhou, Xie; arXiv 2209.02684, spec/algorithms.md 4e). That paper's code is not public
and its Softplus parameter is not known to us: beta = 10 is the parametric Softplus
(alpha = 10) of Smooth Adversarial Training (Xie et al. 2020), which the bag of tricks
builds on. Treat it as a hyper-parameter (make_activation's softplus_beta); torch's Softplus
is the identity where beta * x > 20.
"""
from __future__ import annotations

import math
import numbers

from torch import nn

from ..nn.sparta import Sparta

ACTIVATIONS = ("relu", "sparta", "silu", "softplus", "gelu")
SOFTPLUS_BETA = 10.0


def check_activation(name) -> str:
    """name if it is one of ACTIVATIONS, else ValueError listing them."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(repr(a) for a in ACTIVATIONS)}, got {name!r}")
    return name


def make_activation(name: str, channels: int, softplus_beta: float = SOFTPLUS_BETA) -> nn.Module:
    """A new activation module `name` (one of ACTIVATIONS) for (N, channels, H, W) inputs.

    channels is the width at the activation site; only "sparta" has parameters (one gate
    per channel) and needs it, but it is checked for every name so that a wrong width shows
    up with any activation.
    """
    check_activation(name)
    if not isinstance(channels, int) or isinstance(channels, bool) or channels <= 0:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if name == "relu":
        return nn.ReLU()
    if name == "sparta":
        return Sparta(channels)
    if name == "silu":
        return nn.SiLU()
    if name == "gelu":
        return nn.GELU()
    ok = (isinstance(softplus_beta, numbers.Real) and not isinstance(softplus_beta, bool)
          and math.isfinite(softplus_beta) and softplus_beta > 0)
    if not ok:
        raise ValueError(f"softplus_beta must be a finite number > 0, got {softplus_beta!r}")
    return nn.Softplus(beta=float(softplus_beta))
