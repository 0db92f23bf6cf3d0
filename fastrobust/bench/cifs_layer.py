"""The CIFS layer as bench_cifs times it: the composition of fastrobust.nn.CIFS.forward on
plain tensors. The probe's parameters are inputs of the benchmark, so that their gradients are
checked and timed; calling the module through torch.func.functional_call instead would add
about 40 us per call on a 2-core CPU, some 5% of a layer4 step at batch 32.

The two probes are those of the official CIFAR ResNet-18 (spec/algorithms.md section 3), on the
globally average-pooled feature: "linear" (Linear(C, K)) and "mlp" (Linear(C, 128) ->
Softplus(beta=5) -> Linear(128, K)). Both layers run in train mode (t1 = the label), with the
official temperature 1 and scale 1 (the defaults of the ops).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

from fastrobust import ops
from fastrobust.ops.cifs_layer import global_pool as pool, probe_logits, probe_relevance
from fastrobust.reference.cifs import cifs_layer

MLP_HIDDEN = 128
MLP_BETA = 5.0


@dataclass(frozen=True)
class Probe:
    """A probe on the pooled feature: its parameters' shapes for (channels C, classes K), in
    call order, its logits and the closed form of the relevance d(z_t1 + z_t2)/d pooled."""

    name: str
    param_shapes: Callable[[int, int], Dict[str, Tuple[int, ...]]]
    logits: Callable[..., torch.Tensor]  # (pooled, *params) -> (B, K)
    relevance: Callable[..., torch.Tensor]  # (pooled, t1, t2, *params) -> (B, C)


def linear_logits(pooled, *params):
    return probe_logits("linear", MLP_BETA, pooled, params)


def linear_relevance(pooled, t1, t2, *params):
    return probe_relevance("linear", MLP_BETA, pooled, t1, t2, params)


def mlp_logits(pooled, *params):
    return probe_logits("mlp", MLP_BETA, pooled, params)


def mlp_relevance(pooled, t1, t2, *params):
    return probe_relevance("mlp", MLP_BETA, pooled, t1, t2, params)


LINEAR = Probe("linear", lambda c, k: {"weight": (k, c), "bias": (k,)}, linear_logits, linear_relevance)
MLP = Probe("mlp", lambda c, k: {"w1": (MLP_HIDDEN, c), "b1": (MLP_HIDDEN,), "w2": (k, MLP_HIDDEN), "b2": (k,)},
            mlp_logits, mlp_relevance)


def fused_layer(probe: Probe, labels: torch.Tensor):
    """(feat * m, probe logits) as fastrobust.nn.CIFS computes them (fastrobust.ops.cifs_layer):
    the probe logits on the non-detached pooled feature, the targets from them, the closed-form
    relevance, the fused softmax + reweighting, and in the backward one kernel that writes the
    feature gradient with the pooling's term."""

    def layer(feat, *params):
        return ops.cifs_layer(feat, params, labels, probe=probe.name, beta=MLP_BETA)

    return layer


def reference_layer(probe: Probe, labels: torch.Tensor):
    """The same layer as the official module computes it (autograd, create_graph=True), the
    probe logits with the same ops as fused_layer, but pooled by torch's reduction (the graph
    needs it; fused_layer pools with the extension's CPU kernel, another summation order)."""

    def layer(feat, *params):
        return cifs_layer(feat, lambda f: probe.logits(pool(f), *params), labels, training=True)

    return layer
