"""A small benchmark harness in the style of xformers' benchmarks/utils.py.

A suite is a list of cases and a set of implementations. A case fixes the input shapes,
dtype, device and mode ("fwd" or "fwd+bwd"); an implementation is a callable built per case
("fused", "reference" = the eager pure-PyTorch composition, "compiled" = torch.compile of
the reference, added here, plus any baseline a suite brings). For every case the harness

1. builds seeded random inputs (and, for fwd+bwd, a seeded output gradient);
2. checks every implementation against an oracle FIRST: the reference run in float64 on
   the same (rounded) inputs; outputs and, for fwd+bwd, the gradients of every input (see
   judge() for the rule). An implementation that fails the check or raises is recorded as
   such and not timed;
3. times the rest with torch.utils.benchmark.Timer.blocked_autorange, interleaved in a few
   rounds, and keeps the median (Timer synchronises CUDA; warm-up runs are not timed),
   together with the suite's floors (steps doing only the work the fused op cannot avoid,
   a plain multiply say: timed, never checked);
4. reports the ratios t_impl / t_fused (the speed-up of the fused op), the fused op's
   achieved GB/s against the device's measured copy bandwidth (CUDA), and the activation
   memory each implementation saves for backward (fwd+bwd cases).

results.py runs a whole suite and writes its record (JSON, CSV, plot, text table);
checking.py holds the check of step 2, timing.py the timer of step 3.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .checking import ORACLE_DTYPE, judge, max_abs_errors, tensor_errors, upcast
# measure_copy_bandwidth: the suites call it as harness.measure_copy_bandwidth
from .timing import Step, error_text, measure_copy_bandwidth, time_steps_interleaved  # noqa: F401

# where results go unless --out says otherwise: ./bench-results of the working directory (a
# source checkout's benchmarks/run.py writes to benchmarks/results instead)
DEFAULT_OUT_DIR = Path("bench-results")

FUSED = "fused"
REFERENCE = "reference"
COMPILED = "compiled"
MODES = ("fwd", "fwd+bwd")

DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp64": torch.float64,
}
DTYPE_ALIASES = {"float32": "fp32", "f32": "fp32", "float": "fp32", "bfloat16": "bf16",
                 "float16": "fp16", "f16": "fp16", "half": "fp16", "float64": "fp64",
                 "f64": "fp64", "double": "fp64"}
# Same rtol and atol per dtype: |actual - expected| <= tol + tol * |expected|.
TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2, torch.float64: 1e-7}

SEED = 0
DEFAULT_MIN_RUN_TIME = {"cpu": 0.5, "cuda": 0.25}
QUICK_MIN_RUN_TIME = 0.02
TIMING_ROUNDS = 5
QUICK_TIMING_ROUNDS = 1


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


def parse_dtype(name: str) -> torch.dtype:
    key = name.strip().lower()
    key = DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {sorted(DTYPES)}")
    return DTYPES[key]


@dataclass(frozen=True)
class Case:
    """One benchmark point. `shapes` lists every input of the implementations, by name, in
    call order; `params` names the inputs that are parameters (not counted as activation
    memory); `grad_inputs` names the inputs differentiated in fwd+bwd (None: all);
    `input_dtypes` names the inputs kept in another dtype than `dtype` (the float32 master
    weights of an autocast run, say)."""

    suite: str
    label: str
    shapes: Tuple[Tuple[str, Tuple[int, ...]], ...]
    dtype: torch.dtype
    device: str
    mode: str
    params: Tuple[str, ...] = ()
    grad_inputs: Optional[Tuple[str, ...]] = None
    input_dtypes: Tuple[Tuple[str, torch.dtype], ...] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @property
    def name(self) -> str:
        return f"{self.label} {dtype_name(self.dtype)} {self.mode}"

    @property
    def input_names(self) -> Tuple[str, ...]:
        return tuple(n for n, _ in self.shapes)

    def differentiated(self) -> Tuple[str, ...]:
        if self.mode != "fwd+bwd":
            return ()
        return self.input_names if self.grad_inputs is None else self.grad_inputs


Implementation = Callable[..., object]
ImplementationBuilder = Callable[[Case], Implementation]
InputMaker = Callable[[Case, torch.Generator], Dict[str, torch.Tensor]]


def standard_normal_inputs(case: Case, gen: torch.Generator) -> Dict[str, torch.Tensor]:
    """Default input maker: N(0, 1) for every input (float32 on the CPU, cast later)."""
    return {name: torch.randn(shape, generator=gen) for name, shape in case.shapes}


@dataclass
class Suite:
    """`implementations` must hold FUSED and REFERENCE; the harness adds COMPILED (the
    reference under torch.compile, unless the suite brings its own) unless compiled baselines
    are skipped. `make_inputs`
    returns float32 CPU tensors from the seeded generator; the harness casts and moves them.
    `floors` build, from a case and its inputs, steps that are timed but never checked (they
    compute something else): the work the fused op cannot avoid, a lower bound of its time."""

    name: str
    cases: List[Case]
    implementations: Dict[str, ImplementationBuilder]
    make_inputs: InputMaker = standard_normal_inputs
    description: str = ""
    floors: Dict[str, FloorBuilder] = field(default_factory=dict)


@dataclass
class Options:
    out_dir: Path = DEFAULT_OUT_DIR
    min_run_time: Optional[float] = None  # None: DEFAULT_MIN_RUN_TIME for the device
    rounds: Optional[int] = None  # interleaved timing rounds; None: TIMING_ROUNDS
    quick: bool = False
    compile: bool = True
    verbose: bool = True
    argv: List[str] = field(default_factory=list)

    def run_time_for(self, device: str) -> float:
        if self.min_run_time is not None:
            return self.min_run_time
        return QUICK_MIN_RUN_TIME if self.quick else DEFAULT_MIN_RUN_TIME[device_type(device)]

    def timing_rounds(self) -> int:
        if self.rounds is not None:
            return self.rounds
        return QUICK_TIMING_ROUNDS if self.quick else TIMING_ROUNDS


def device_type(device: str) -> str:
    return torch.device(device).type


# The dtypes whose cases run their implementations under torch.autocast.
AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def autocast_call(case: Case, fn):
    """fn(*args) under torch.autocast to the case's dtype on its device (a float64 oracle
    passes through untouched: autocast leaves float64 alone)."""

    def autocast_fn(*args):
        with torch.autocast(device_type=device_type(case.device), dtype=case.dtype):
            return fn(*args)

    return autocast_fn


# ----------------------------------------------------------------------------- inputs


def build_inputs(suite: Suite, case: Case) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    raw = suite.make_inputs(case, gen)
    grads = set(case.differentiated())
    dtypes = dict(case.input_dtypes)
    inputs = {}
    for name in case.input_names:
        t = raw[name].to(device=case.device, dtype=dtypes.get(name, case.dtype))
        inputs[name] = t.requires_grad_(name in grads)
    return inputs


def as_outputs(result) -> Tuple[torch.Tensor, ...]:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def make_grad_outputs(outputs: Sequence[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    """Seeded N(0, 1) gradients for every floating output (None for the others)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    return tuple(
        torch.randn(o.shape, generator=gen).to(device=o.device, dtype=o.dtype)
        if o.dtype.is_floating_point else None
        for o in outputs
    )


# ----------------------------------------------------------------------------- running


GradOutputs = Optional[Sequence[Optional[torch.Tensor]]]
FloorBuilder = Callable[[Case, Dict[str, torch.Tensor]], Step]


def make_step(case: Case, fn: Implementation, inputs: Dict[str, torch.Tensor],
              grad_outputs: GradOutputs) -> Step:
    """The timed unit: forward, and for fwd+bwd also the input gradients. Gradients come
    from torch.autograd.grad (no accumulation into .grad, nothing to zero between runs)."""
    args = [inputs[n] for n in case.input_names]
    wrt_names = case.differentiated()
    wrt = [inputs[n] for n in wrt_names]

    def forward() -> Dict[str, torch.Tensor]:
        outputs = as_outputs(fn(*args))
        return {f"out{i}" if len(outputs) > 1 else "out": o for i, o in enumerate(outputs)}

    if not wrt_names:
        return forward

    def forward_backward() -> Dict[str, torch.Tensor]:
        named = forward()
        pairs = [(o, g) for o, g in zip(named.values(), grad_outputs) if g is not None]
        grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs])
        named.update({f"grad_{n}": g for n, g in zip(wrt_names, grads)})
        return named

    return forward_backward


def saved_activation_bytes(case: Case, fn: Implementation, inputs: Dict[str, torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd keeps for backward after one forward,
    leaving out the parameters (they are kept anyway, whatever the implementation)."""
    param_ptrs = {inputs[n].untyped_storage().data_ptr() for n in case.params}
    storages = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            storages[(t.device, s.data_ptr())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*[inputs[n] for n in case.input_names])
    return sum(storages.values())


def traffic_bytes(inputs: Dict[str, torch.Tensor], result: Dict[str, torch.Tensor],
                  grad_outputs) -> int:
    """Minimal DRAM traffic of one step: forward reads every input and writes every output;
    backward reads the output gradients and the inputs again and writes the gradients."""
    fwd = sum(t.nbytes for t in inputs.values())
    fwd += sum(t.nbytes for n, t in result.items() if not n.startswith("grad_"))
    if grad_outputs is None:
        return fwd
    bwd = sum(g.nbytes for g in grad_outputs if g is not None)
    bwd += sum(t.nbytes for t in inputs.values())
    bwd += sum(t.nbytes for n, t in result.items() if n.startswith("grad_"))
    return fwd + bwd


class Unsupported(Exception):
    """Raised by an implementation builder for a case it cannot run by design (a baseline
    that does not support the case): recorded as skipped, with the reason, not as a failure."""


def compiled_builder(reference: ImplementationBuilder) -> ImplementationBuilder:
    """torch.compile of the reference, static shapes, with a fresh dynamo cache per case
    so that no case runs a dynamic-shape kernel compiled for another one."""

    def build(case: Case) -> Implementation:
        torch._dynamo.reset()
        return torch.compile(reference(case), dynamic=False)

    return build


def implementations_for(suite: Suite, options: Options) -> Dict[str, ImplementationBuilder]:
    impls = dict(suite.implementations)
    missing = {FUSED, REFERENCE} - impls.keys()
    if missing:
        raise ValueError(f"suite {suite.name} lacks the implementations {sorted(missing)}")
    if options.compile:
        impls.setdefault(COMPILED, compiled_builder(impls[REFERENCE]))
    else:  # a suite's own compiled baselines (COMPILED, compiled_*) are skipped too
        impls = {k: v for k, v in impls.items() if k != COMPILED and not k.startswith(COMPILED + "_")}
    # The reference runs first: its errors are the yardstick of the others (see judge).
    return {REFERENCE: impls.pop(REFERENCE), **impls}


def run_case(suite: Suite, case: Case, options: Options, copy_gbps: Optional[float]) -> dict:
    record = {"case": case.name, "label": case.label, "dtype": dtype_name(case.dtype),
              "mode": case.mode, "device": case.device,
              "shapes": {n: list(s) for n, s in case.shapes}, "implementations": {}}
    if case.input_dtypes:
        record["input_dtypes"] = {n: dtype_name(d) for n, d in case.input_dtypes}
    impls = implementations_for(suite, options)
    inputs = build_inputs(suite, case)
    try:
        grad_outputs, expected = oracle(case, impls[REFERENCE], inputs)
    except Exception as exc:  # without an oracle nothing can be checked or timed
        record["error"] = "oracle failed: " + error_text(exc)
        return record

    correct = check_implementations(case, impls, inputs, grad_outputs, expected, record["implementations"])
    for impl_name, (fn, step) in correct.items():
        entry = record["implementations"][impl_name]
        try:
            if impl_name == FUSED:
                entry["traffic_bytes"] = traffic_bytes(inputs, step(), grad_outputs)
            if case.differentiated() and impl_name != COMPILED:
                entry["saved_activation_bytes"] = saved_activation_bytes(case, fn, inputs)
        except Exception as exc:
            entry["error"] = error_text(exc)
    steps = {name: step for name, (_, step) in correct.items()}
    steps.update(floor_steps(suite, case, inputs, record["implementations"]))
    timings = time_interleaved(case, steps, options.run_time_for(case.device), options.timing_rounds())
    for impl_name, timing in timings.items():
        record["implementations"][impl_name].update(timing)
    add_derived_metrics(record, copy_gbps)
    return record


def oracle(case: Case, reference: ImplementationBuilder, inputs: Dict[str, torch.Tensor]):
    """(output gradients for the implementations, expected outputs and gradients): the
    reference run in float64 on exactly the (rounded) tensors the implementations see."""
    fn = reference(case)
    with torch.no_grad():
        outputs = as_outputs(fn(*[inputs[n] for n in case.input_names]))
    grad_outputs = make_grad_outputs(outputs) if case.differentiated() else None
    oracle_grads = None if grad_outputs is None else tuple(
        None if g is None else upcast(g) for g in grad_outputs)
    oracle_inputs = {n: upcast(t) for n, t in inputs.items()}
    return grad_outputs, make_step(case, fn, oracle_inputs, oracle_grads)()


def check_implementations(case: Case, impls: Dict[str, ImplementationBuilder], inputs,
                          grad_outputs, expected, entries: dict) -> Dict[str, Tuple[Implementation, Step]]:
    """Builds and checks every implementation, recording each in entries[name]; returns
    {name: (implementation, step)} for those that are correct. Any exception (a
    torch.compile failure, say) is recorded, never raised."""
    tol = TOLERANCES[case.dtype]
    eager_errors = None  # set once the reference (which runs first) has been checked
    correct = {}
    for impl_name, builder in impls.items():
        entry = entries[impl_name] = {}
        try:
            fn = builder(case)
            step = make_step(case, fn, inputs, grad_outputs)
            errors = tensor_errors(step(), expected, tol)
        except Unsupported as exc:
            entry["skipped"] = str(exc)
            continue
        except ValueError as exc:  # a missing or misshapen output
            entry.update(correct=False, mismatch=str(exc), tol=tol)
            continue
        except Exception as exc:
            entry["error"] = error_text(exc)
            continue
        if impl_name == REFERENCE and case.dtype != ORACLE_DTYPE:
            eager_errors = max_abs_errors(errors)  # eager is the yardstick: only NaN/inf fail it
        entry.update(judge(errors, tol, eager_errors))
        if entry["correct"]:
            correct[impl_name] = (fn, step)
    return correct


def floor_steps(suite: Suite, case: Case, inputs: Dict[str, torch.Tensor],
                entries: dict) -> Dict[str, Step]:
    """Builds the suite's floors for the case, recording each in entries[name] as unchecked."""
    steps = {}
    for name, build in suite.floors.items():
        entry = entries[name] = {"checked": False}
        try:
            steps[name] = build(case, inputs)
        except Exception as exc:
            entry["error"] = error_text(exc)
    return steps


def time_interleaved(case: Case, steps: Dict[str, Step], min_run_time: float, rounds: int) -> dict:
    """time_steps_interleaved for the steps of one benchmark case."""
    return time_steps_interleaved(steps, min_run_time, rounds, label=case.suite, sub_label=case.name)


def add_derived_metrics(record: dict, copy_gbps: Optional[float]) -> None:
    impls = record["implementations"]
    fused_t = impls.get(FUSED, {}).get("median_s")
    record["speedup_of_fused"] = {
        name: (e["median_s"] / fused_t if fused_t and e.get("median_s") else None)
        for name, e in impls.items() if name != FUSED
    }
    record["fused_gbps"] = record["fused_fraction_of_copy_bandwidth"] = None
    traffic = impls.get(FUSED, {}).get("traffic_bytes")
    if fused_t and traffic and record["device"].startswith("cuda"):
        gbps = traffic / fused_t / 1e9
        record["fused_gbps"] = gbps
        record["fused_fraction_of_copy_bandwidth"] = gbps / copy_gbps if copy_gbps else None
    fused_saved = impls.get(FUSED, {}).get("saved_activation_bytes")
    ref_saved = impls.get(REFERENCE, {}).get("saved_activation_bytes")
    record["saved_activation_bytes"] = None if fused_saved is None or ref_saved is None else {
        FUSED: fused_saved, REFERENCE: ref_saved,
        "fused_to_reference": fused_saved / ref_saved if ref_saved else None,
    }
