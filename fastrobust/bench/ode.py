"""ODE suite: TisODE's ODE block (fastrobust.nn.ODEBlock of TisODEFunc), the fixed-grid Euler
solve over [0, 1] with step 0.05 (20 steps), forward + backward.

Implementations, each checked against the float64 oracle before it is timed:
- "reference": torchdiffeq.odeint(func, z, t=[0, 1], method="euler",
  options={"step_size": 0.05})[-1], the baseline (the oracle is this, in float64);
- "fused": fastrobust's ODEBlock(func, method="euler", step=0.05), the Euler loop of plain
  tensor ops (the harness's name for the implementation the others are divided by);
- "compiled": torch.compile(block, fullgraph=True) of that block, the whole solve one graph
  (a graph break is an error, recorded as such);
- "compiled_odeint": torch.compile of the odeint call. odeint does not fit one graph
  (data-dependent checks of t, an .item() in its grid constructor), so it is compiled with
  graph breaks; where that raises, forward or backward, the case records it as skipped;
- "cuda_graph" (CUDA only): the block through fastrobust.nn.ode.cuda_graphed
  (torch.cuda.make_graphed_callables), captured on a copy of the first input; each call copies
  the input into the graph's static buffer and replays.
The two compiled ones are left out with --no-compile (the harness drops "compiled" and every
"compiled_*").

Every implementation runs the same TisODEFunc maths on the same tensors: the case's inputs are
z and the function's six parameters, which each implementation binds into its own TisODEFunc
(as torch.func.functional_call does), so that the harness differentiates z and every parameter
and compares all seven gradients.

Cases (B, C, H=W): the official MNIST net's ODE block (width 64; 28x28 inputs are 13x13 after
its feature extractor) at batch 128; the same net on 8x8 digits (3x3 maps) at batch 128;
--quick: B2 C16 5x5. GroupNorm of 32 groups (TisODEFunc's default: 16 at C16).

dtypes: fp32 only by default. The official net trains in fp32; in bf16 each Euler update h f
is 1/20 of the state's scale, so every step drops about four of bf16's eight mantissa bits of
the update, and 20 steps of that measure rounding more than the solver (--dtype bf16 still
runs, judged by the harness's rule against the eager reference's own bf16 error).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from . import harness
from .harness import COMPILED, FUSED, REFERENCE, Case, Suite, Unsupported, device_type

NAME = "ode"
T_END = 1.0
STEP = 0.05  # TisODE's Euler step: 20 steps over [0, 1]
BATCH = 128
MNIST = (64, 13)  # official MNIST net: width 64, 13x13 maps after the feature extractor
DIGITS = (64, 3)  # the same net on 8x8 digits: 3x3 maps
QUICK = (2, 16, 5)  # batch, channels, H = W
DEFAULT_DTYPES = (torch.float32,)
COMPILED_ODEINT = "compiled_odeint"
CUDA_GRAPH = "cuda_graph"
# TisODEFunc's parameters, in the order the implementations take them after z.
PARAMS = ("conv1.weight", "norm1.weight", "norm1.bias", "conv2.weight", "norm2.weight", "norm2.bias")


def input_name(param: str) -> str:
    return param.replace(".", "_")


def make_inputs(case: Case, gen: torch.Generator) -> Dict[str, torch.Tensor]:
    """z ~ N(0, 1); conv weights N(0, 1 / fan_in); GroupNorm weights 1 + 0.1 N(0, 1) and biases
    0.1 N(0, 1), away from the identity so that their gradients are checked on something."""
    out = {}
    for name, shape in case.shapes:
        x = torch.randn(shape, generator=gen)
        if name.startswith("conv"):
            x = x / math.sqrt(shape[1] * shape[2] * shape[3])
        elif name.endswith("_weight"):
            x = 1.0 + 0.1 * x
        elif name.endswith("_bias"):
            x = 0.1 * x
        out[name] = x
    return out


class Bound:
    """fn(z, *params) for the harness: binds params (the case's tensors, so that the harness's
    gradients reach them) into its own TisODEFunc, then runs `run(z)` on it."""

    def __init__(self, case: Case, make_run: Callable[[torch.nn.Module], Callable]):
        from fastrobust.nn import TisODEFunc

        self.func = TisODEFunc(dict(case.shapes)["z"][1])
        self.slots: List[Tuple[torch.nn.Module, str]] = [
            (self.func.get_submodule(p.rsplit(".", 1)[0]), p.rsplit(".", 1)[1]) for p in PARAMS]
        self.run = make_run(self.func)

    def bind(self, params) -> None:
        for (module, attr), p in zip(self.slots, params):
            if module._parameters[attr] is not p:  # torch.func.functional_call's way
                module._parameters[attr] = p

    def __call__(self, z: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        self.bind(params)
        return self.run(z)


def odeint_run(func: torch.nn.Module) -> Callable:
    import torchdiffeq

    grids: Dict[tuple, torch.Tensor] = {}  # [0, T] made once per dtype and device

    def run(z: torch.Tensor) -> torch.Tensor:
        key = (z.dtype, z.device)
        if key not in grids:
            grids[key] = torch.tensor([0.0, T_END], dtype=z.dtype, device=z.device)
        return torchdiffeq.odeint(func, z, grids[key], method="euler", options={"step_size": STEP})[-1]

    return run


def euler_block(func: torch.nn.Module):
    from fastrobust.nn import ODEBlock

    return ODEBlock(func, t_end=T_END, method="euler", step=STEP)


def reference(case: Case):
    return Bound(case, odeint_run)


def fused(case: Case):
    return Bound(case, euler_block)


def compiled(case: Case):
    """torch.compile(block, fullgraph=True): the solve as one graph. A fresh dynamo cache per
    case (this builder runs before compiled_odeint's, so it clears nothing that one needs)."""
    torch._dynamo.reset()
    return Bound(case, lambda func: torch.compile(euler_block(func), fullgraph=True, dynamic=False))


def compiled_odeint(case: Case):
    """torch.compile of the odeint call, graph breaks allowed. Its first call compiles forward
    and backward (a trial forward and torch.autograd.grad, which accumulates nothing) and raises
    Unsupported where either fails."""
    bound = Bound(case, lambda func: torch.compile(odeint_run(func), dynamic=False))
    tried = []

    def fn(z, *params):
        if not tried:
            tried.append(True)
            try:
                out = bound(z, *params)
                wrt = [t for t in (z, *params) if t.requires_grad]
                if wrt and out.requires_grad:
                    torch.autograd.grad(out.sum(), wrt)
            except Exception as exc:
                raise Unsupported("torch.compile of torchdiffeq.odeint failed: " + harness.error_text(exc, 500))
        return bound(z, *params)

    return fn


def cuda_graph(case: Case):
    """The Euler block through fastrobust.nn.ode.cuda_graphed, captured at the first call on a
    copy of its z (so that every call, that one included, copies z into the graph's input)."""
    if device_type(case.device) != "cuda":
        raise Unsupported("CUDA graphs need a CUDA device")
    from fastrobust.nn.ode import cuda_graphed

    bound = Bound(case, euler_block)
    graphed = []

    def fn(z, *params):
        if not graphed:
            bound.bind(params)
            example = z.detach().clone().requires_grad_(z.requires_grad)
            graphed.append(cuda_graphed(bound.run, example))
        return graphed[0](z)  # params: the capture's (the case's tensors, bound above)

    return fn


def make_case(device: str, dtype: torch.dtype, batch: int, channels: int, hw: int) -> Case:
    params = {
        "conv1.weight": (channels, channels, 3, 3), "norm1.weight": (channels,), "norm1.bias": (channels,),
        "conv2.weight": (channels, channels, 3, 3), "norm2.weight": (channels,), "norm2.bias": (channels,),
    }
    shapes = (("z", (batch, channels, hw, hw)), *((input_name(p), params[p]) for p in PARAMS))
    return Case(suite=NAME, label=f"tisode euler B{batch} C{channels} {hw}x{hw}", shapes=shapes, dtype=dtype,
                device=device, mode="fwd+bwd", params=tuple(input_name(p) for p in PARAMS))


def make_cases(device: str, dtypes: Iterable[torch.dtype], quick: bool) -> List[Case]:
    points = [QUICK] if quick else [(BATCH, *MNIST), (BATCH, *DIGITS)]
    return [make_case(device, dtype, *point) for dtype in dtypes for point in points]


def build_suite(device: str, dtypes: Optional[Iterable[torch.dtype]] = None, quick: bool = False) -> Suite:
    implementations = {FUSED: fused, REFERENCE: reference, COMPILED: compiled, COMPILED_ODEINT: compiled_odeint}
    if device_type(device) == "cuda":
        implementations[CUDA_GRAPH] = cuda_graph
    return Suite(
        name=NAME,
        cases=make_cases(device, dtypes or DEFAULT_DTYPES, quick),
        implementations=implementations,
        make_inputs=make_inputs,
        description="TisODE block, Euler 20 steps, fwd+bwd: fastrobust ODEBlock (fused) vs torchdiffeq.odeint",
    )

