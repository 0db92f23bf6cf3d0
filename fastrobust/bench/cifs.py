"""CIFS suite: the CIFS layer and its fused op cifs_reweight, forward + backward.

Cases:
- "layer linear ..." and "layer mlp ...": the whole CIFS layer (fastrobust/bench/cifs_layer.py) in
  train mode with random labels; outputs (feat * m, probe logits), gradients of the feature and
  of every probe parameter. "fused" is the closed form (probe logits on the pooled feature,
  fastrobust.ops.cifs_targets, the probe's closed-form relevance, fastrobust.ops.cifs_reweight),
  "reference" is fastrobust.reference.cifs.cifs_layer (the official module's autograd.grad with
  create_graph=True), "compiled" is torch.compile of the reference (recorded as failed where it
  raises or gets a gradient wrong: it has no double backward).
- "reweight ...": the op fastrobust.ops.cifs_reweight alone against its eager reference
  (fastrobust.reference.cifs.cifs_reweight) and torch.compile of it.
Every case also times "floor": feat * mask with a precomputed (B, C, 1, 1) mask, forward and
the feature gradient, the memory traffic the fused op cannot avoid (timed, not checked).

Shapes (B, C, H=W, K): the CIFAR ResNet-18 layer4 feature (C 512, 4x4, K 10) at batch 128 and
256 on CUDA, 32 on CPU; the ImageNet ResNet-50 last stage (C 2048, 7x7, K 1000) at batch 64 on
CUDA, 8 on CPU; batch 2 with --quick. The linear probe at every shape, the mlp probe at the
layer4 shape and the first of its batches.

dtypes: fp32, and bf16 as bf16 training runs it: torch.autocast(bf16) around the layer, the
feature in bf16 (as a conv under autocast returns it) and the probe parameters float32 master
weights. In the bf16 reweight cases the relevance is float32, as the linear probe's closed form
gives it under autocast. Inputs: feat and relevance N(0, 1), probe parameters 0.5 N(0, 1), so
that relevances are of order 1 and the mask is far from uniform (at nn.Linear's initial scale
it is nearly constant, and the checks would not see the softmax).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import torch

import fastrobust
from fastrobust import ops
from fastrobust.reference import cifs as reference_cifs

from . import cifs_layer
from .harness import (AUTOCAST_DTYPES, COMPILED, FUSED, REFERENCE, SEED, Case, Suite, Unsupported, autocast_call,
                      compiled_builder, device_type)

NAME = "cifs"
FLOOR = "floor"
LAYER4 = (512, 4, 10)  # CIFAR ResNet-18 layer4: channels, H = W, classes
RESNET50 = (2048, 7, 1000)  # ImageNet ResNet-50 after its last stage
BATCHES = {"cuda": {LAYER4: (128, 256), RESNET50: (64,)}, "cpu": {LAYER4: (32,), RESNET50: (8,)}}
QUICK_BATCH = 2
DEFAULT_DTYPES = (torch.float32, torch.bfloat16)
PROBE_PARAM_STD = 0.5


@dataclass(frozen=True)
class CifsCase(Case):
    """A harness case and, for a layer case, its probe and number of classes (for the labels);
    probe None: cifs_reweight alone."""

    probe: Optional[cifs_layer.Probe] = None
    classes: int = 0


def make_inputs(case: Case, gen: torch.Generator) -> Dict[str, torch.Tensor]:
    return {name: (1.0 if name in ("feat", "relevance") else PROBE_PARAM_STD) * torch.randn(shape, generator=gen)
            for name, shape in case.shapes}


def train_labels(case: CifsCase) -> torch.Tensor:
    """Random labels, the same for every implementation of the case (and for the oracle)."""
    batch = dict(case.shapes)["feat"][0]
    gen = torch.Generator().manual_seed(SEED)
    return torch.randint(case.classes, (batch,), generator=gen).to(case.device)


def under_autocast(case: Case, fn):
    """fn under torch.autocast for a bf16 or fp16 case; fn itself otherwise. The oracle runs the
    same function in float64, which autocast leaves alone."""
    return autocast_call(case, fn) if case.dtype in AUTOCAST_DTYPES else fn


def fused(case: CifsCase):
    if not (fastrobust.HAS_EXT and hasattr(torch.ops.fastrobust, "cifs_reweight")):
        # the op would silently run its reference
        raise RuntimeError(f"fastrobust._C has no cifs_reweight kernel (extension: {fastrobust.EXT_ERROR})")
    if case.probe is None:
        return ops.cifs_reweight
    return under_autocast(case, cifs_layer.fused_layer(case.probe, train_labels(case)))


def reference(case: CifsCase):
    if case.probe is None:
        return reference_cifs.cifs_reweight
    return under_autocast(case, cifs_layer.reference_layer(case.probe, train_labels(case)))


def compiled(case: CifsCase):
    """torch.compile of the reference: the reweight op's; the layer's cannot compile (its
    create_graph backward is a double backward, which aot_autograd rejects in float32 and,
    under bf16 autocast, silently drops from the probe weights' gradients)."""
    if case.probe is not None:
        raise Unsupported("torch.compile does not support the layer reference's double backward (create_graph)")
    return compiled_builder(reference)(case)


def multiply_floor(case: Case, inputs: Dict[str, torch.Tensor]):
    """feat * mask and the gradient of feat, with the mask and output gradient made once."""
    feat = inputs["feat"]
    mask = torch.rand_like(feat[:, :, :1, :1])
    grad_out = torch.randn_like(feat)

    def step():
        out = feat * mask
        (grad_feat,) = torch.autograd.grad(out, feat, grad_out)
        return {"out": out, "grad_feat": grad_feat}

    return step


def float32_inputs(dtype: torch.dtype, names: Iterable[str]):
    """The inputs kept float32 in an autocast case (master weights, the relevance)."""
    return tuple((n, torch.float32) for n in names) if dtype in AUTOCAST_DTYPES else ()


def layer_case(device: str, dtype: torch.dtype, probe: cifs_layer.Probe, batch: int, feature) -> CifsCase:
    c, hw, k = feature
    params = probe.param_shapes(c, k)
    return CifsCase(suite=NAME, label=f"layer {probe.name} B{batch} C{c} {hw}x{hw} K{k}", device=device,
                    dtype=dtype, mode="fwd+bwd", shapes=(("feat", (batch, c, hw, hw)), *params.items()),
                    params=tuple(params), input_dtypes=float32_inputs(dtype, params), probe=probe, classes=k)


def reweight_case(device: str, dtype: torch.dtype, batch: int, feature) -> CifsCase:
    c, hw, _ = feature
    return CifsCase(suite=NAME, label=f"reweight B{batch} C{c} {hw}x{hw}", device=device, dtype=dtype,
                    mode="fwd+bwd", shapes=(("feat", (batch, c, hw, hw)), ("relevance", (batch, c))),
                    input_dtypes=float32_inputs(dtype, ["relevance"]))


def make_cases(device: str, dtypes: Iterable[torch.dtype], quick: bool) -> List[CifsCase]:
    batches = {feature: (QUICK_BATCH,) if quick else bs for feature, bs in BATCHES[device_type(device)].items()}
    points = [(batch, feature) for feature, bs in batches.items() for batch in bs]
    cases = []
    for dtype in dtypes:
        cases += [layer_case(device, dtype, cifs_layer.LINEAR, b, f) for b, f in points]
        cases.append(layer_case(device, dtype, cifs_layer.MLP, batches[LAYER4][0], LAYER4))
        cases += [reweight_case(device, dtype, b, f) for b, f in points]
    return cases


def build_suite(device: str, dtypes: Optional[Iterable[torch.dtype]] = None, quick: bool = False) -> Suite:
    cases = make_cases(device, dtypes or DEFAULT_DTYPES, quick)
    return Suite(
        name=NAME,
        cases=cases,
        implementations={FUSED: fused, REFERENCE: reference, COMPILED: compiled},
        make_inputs=make_inputs,
        floors={FLOOR: multiply_floor},
        description="CIFS layer and cifs_reweight fwd+bwd vs eager; floor = plain feat * mask",
    )
