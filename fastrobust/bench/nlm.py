"""NLM suite: non-local-means feature denoising (Xie et al., CVPR 2019), its fused ops and block.

Cases (B, C, H = W) and implementations:
- "gaussian B.. C.. d.. HxW", fwd and fwd+bwd: softmax non-local means with the embedded
  layer's shapes, theta and phi (B, d, H, W) with d = C / 2, g (B, C, H, W). "fused" is
  fastrobust.ops.nlm.nlm_gaussian (flash-style, the N x N affinity never stored), "reference"
  is fastrobust.reference.nlm.nlm_gaussian (materialises the (B, N, N) affinity), "sdpa" is
  fastrobust.reference.nlm.nlm_gaussian_sdpa (F.scaled_dot_product_attention, one head, the
  widths zero-padded to a common one as its fused kernels need), "compiled" is torch.compile
  of the reference, and on CUDA "kernel" is nlm_gaussian(..., backend="kernel") (auto may run
  SDPA or the materialising composition there). Each gaussian and block record names the path
  "fused" took ("path": "kernel", "sdpa", "materialize" or "reference";
  fastrobust.ops.nlm_dispatch chooses).
  Shapes: (64, 256, 32), (32, 256, 56), (128, 512, 16), (8, 1024, 28) on CUDA (the stages of a
  CIFAR and an ImageNet ResNet); the same C and H at batch 2 on CPU (measured on 2 cores: at
  C 256 56x56, the largest, one fwd+bwd call of the reference, the fused op or SDPA takes under
  1.5 s in float32 and bf16, and the float64 oracle about 2.5 s, so every case stays well
  within 20 s of reference time and none is skipped).
- "dot ...", fwd+bwd: fastrobust.ops.nlm.nlm_dot (two GEMMs in the cheaper order: theta
  (phi^T g) / N, with no N x N matrix, when 2 C d N < N^2 (d + C); see fastrobust/ops/nlm.py)
  against the materialised fastrobust.reference.nlm.nlm_dot; the gaussian shapes.
- "median B.. C.. HxW", fwd and fwd+bwd: fastrobust.ops.median.median3x3 against
  fastrobust.reference.median.median3x3_unfold_median (reflect pad, unfold, torch.median).
  (128, 256, 32) on CUDA, (8, 256, 32) on CPU. Inputs have no ties inside any 3x3 window
  (below), so that every implementation's arg-median, and gradient, is the same pixel.
- "block layerK ...", fwd+bwd: a stage of PreActResNet18 followed by a DenoisingBlock
  (gaussian, embedded) in train mode, end to end: gradients of the stage input and of every
  parameter of the stage and the block. "fused" runs the modules (torch.func.functional_call
  of nn.Sequential(stage, DenoisingBlock), so through fastrobust.ops.nlm.nlm_gaussian),
  "reference" the same stage and the block written out with the materialised
  fastrobust.reference.nlm.nlm_gaussian, "compiled" torch.compile of the reference. layer1
  (64 channels, 32x32, N = 1024) and layer3 (256 channels, 8x8) of a 32x32 input; batch 128
  on CUDA, 8 on CPU. The BN layers keep no running statistics (the batch statistics of
  train mode, without the running-average update, so that the float64 oracle can run the
  same modules), the block's BN weight is 1 (0, its init, would make the block the identity)
  and theta/phi weights ~ N(0, 1/C), so that the softmax is far from uniform.
--quick: batch 1 (block: 2), the gaussian and dot cases at C 256 32x32 and C 512 16x16 only,
short timing.

dtypes: fp32 and bf16 (the ops on bf16 tensors; the block under torch.autocast(bf16) with the
input in bf16 and float32 master weights, as bf16 training runs it).

Metrics added to the harness's (times, ratios, GB/s, saved activation bytes):
- flops and tflops per implementation (the case's flop count over the median time, the same
  count for every implementation: effective TFLOP/s). gaussian: forward 2 * B * N^2 * (d + C)
  (the logits theta^T phi and the weighted sum), backward 2.5 x forward (FlashAttention's
  convention: the backward's four GEMMs plus the recomputed logits), so fwd+bwd is 3.5 x
  forward. dot: the count of the N x N form, forward 2 * B * N^2 * (d + C), backward 2 x
  forward (no recomputation); the fused op does fewer flops when it takes the Gram-first
  order, so its TFLOP/s there is "effective" only. median and block: none (None).
- peak_memory_bytes per implementation: the peak of memory allocated during one step
  (forward, and for fwd+bwd the input gradients) above what was allocated before it, the
  outputs and gradients included. CUDA: torch.cuda.max_memory_allocated after
  reset_peak_memory_stats. CPU: the running sum of the allocations and frees that torch's
  profiler records (profile_memory=True) for torch's CPU allocator, in time order; it does
  not see memory that libraries allocate outside torch's allocator (oneDNN or MKL scratch
  space). If a measurement fails the value is None with the reason in peak_memory_error.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import torch

from . import harness, results
from .nlm_block import block_fused, block_modules, block_parameters, block_reference, block_sizes
from .harness import (AUTOCAST_DTYPES, COMPILED, FUSED, MODES, REFERENCE, Case, Suite, autocast_call, compiled_builder,
                      device_type)

NAME = "nlm"
SDPA = "sdpa"
KERNEL = "kernel"
DEFAULT_DTYPES = (torch.float32, torch.bfloat16)

# (B, C, H = W) on CUDA; on CPU the same C and H at CPU_BATCH
GAUSSIAN_SHAPES = ((64, 256, 32), (32, 256, 56), (128, 512, 16), (8, 1024, 28))
CPU_BATCH = 2
QUICK_BATCH = 1
QUICK_GAUSSIAN_SHAPES = ((1, 256, 32), (1, 512, 16))  # --quick: the two smallest N, batch 1
MEDIAN_SHAPES = {"cuda": ((128, 256, 32),), "cpu": ((8, 256, 32),)}
BLOCK_STAGES = ("layer1", "layer3")
BLOCK_BATCH = {"cuda": 128, "cpu": 8}
QUICK_BLOCK_BATCH = 2  # BatchNorm in train mode needs more than one value per channel
BACKWARD_FLOPS_FACTOR = {"gaussian": 2.5, "dot": 2.0}


@dataclass(frozen=True)
class NlmCase(Case):
    """A harness case and what it times: kind "gaussian", "dot", "median" or "block"; for a
    block, the PreActResNet18 stage it follows; flops of one step (None: not counted)."""

    kind: str = "gaussian"
    stage: str = ""
    flops: Optional[int] = None


# ----------------------------------------------------------------------------- inputs


def window_distinct_values(shape, gen: torch.Generator) -> torch.Tensor:
    """Values with no tie inside any 3x3 window, exact in bf16 and fp16: the window's nine
    pixels have the nine classes 3 * (h % 3) + (w % 3), and a pixel's value is
    (class + 9 * r - 126) / 64 with r a random integer in [0, 28): an integer of magnitude at
    most 126 over a power of two. (A reflected border repeats a pixel in its window: the copies
    tie, but they are the same pixel, so every arg-median rule sends the gradient there.)"""
    b, c, h, w = shape
    klass = 3 * (torch.arange(h) % 3).view(h, 1) + (torch.arange(w) % 3).view(1, w)
    r = torch.randint(0, 28, (b, c, h, w), generator=gen)
    return ((klass + 9 * r - 126).float() / 64).contiguous()


def make_inputs(case: Case, gen: torch.Generator) -> Dict[str, torch.Tensor]:
    if case.kind == "median":
        return {"x": window_distinct_values(dict(case.shapes)["x"], gen)}
    if case.kind == "block":
        x = torch.randn(dict(case.shapes)["x"], generator=gen)
        return {"x": x, **block_parameters(case.stage)}
    return {name: torch.randn(shape, generator=gen) for name, shape in case.shapes}


# ----------------------------------------------------------------------------- implementations


def require_op(op: str) -> None:
    """Raises unless the compiled extension has the op (without it the op would silently run
    its reference, and the suite would time the reference against itself)."""
    import fastrobust

    if not (fastrobust.HAS_EXT and hasattr(torch.ops.fastrobust, op)):
        raise RuntimeError(f"fastrobust._C has no {op} kernel (extension: {fastrobust.EXT_ERROR or 'built without it'})")


def under_autocast(case: Case, fn):
    """fn under torch.autocast for a bf16/fp16 block case (the float64 oracle is left alone)."""
    return autocast_call(case, fn) if case.kind == "block" and case.dtype in AUTOCAST_DTYPES else fn


def fused(case: NlmCase):
    from fastrobust.ops import median as median_ops
    from fastrobust.ops import nlm as nlm_ops

    if case.kind == "gaussian":
        require_op("nlm_gaussian")
        return nlm_ops.nlm_gaussian
    if case.kind == "dot":  # two GEMMs, no kernel of its own
        return nlm_ops.nlm_dot
    if case.kind == "median":
        require_op("median3x3")
        return median_ops.median3x3
    require_op("nlm_gaussian")
    return under_autocast(case, block_fused(case))


def reference(case: NlmCase):
    from fastrobust.reference import median as median_ref
    from fastrobust.reference import nlm as nlm_ref

    if case.kind == "gaussian":
        return nlm_ref.nlm_gaussian
    if case.kind == "dot":
        return nlm_ref.nlm_dot
    if case.kind == "median":
        return median_ref.median3x3_unfold_median
    return under_autocast(case, block_reference(case))


def kernel(case: NlmCase):
    """Our kernel forced (backend="kernel"), on a GPU: there backend="auto" may run SDPA or the
    materialising composition instead, and the kernel is to be measured all the same. On the
    CPU auto runs the kernel ("fused" is it)."""
    import functools

    from fastrobust.ops import nlm as nlm_ops

    if case.kind != "gaussian" or device_type(case.device) != "cuda":
        raise harness.Unsupported("the forced kernel is timed on CUDA gaussian cases only (elsewhere it is 'fused')")
    require_op("nlm_gaussian")
    return functools.partial(nlm_ops.nlm_gaussian, backend="kernel")


def sdpa(case: NlmCase):
    from fastrobust.reference.nlm import nlm_gaussian_sdpa

    if case.kind != "gaussian":
        raise harness.Unsupported("F.scaled_dot_product_attention is a baseline of the gaussian op only")
    return nlm_gaussian_sdpa


# ----------------------------------------------------------------------------- cases


def nlm_flops(kind: str, mode: str, b: int, c: int, d: int, n: int) -> int:
    forward = 2 * b * n * n * (d + c)
    return int(forward * (1 + BACKWARD_FLOPS_FACTOR[kind])) if mode == "fwd+bwd" else forward


def op_case(kind: str, device: str, dtype: torch.dtype, mode: str, b: int, c: int, hw: int) -> NlmCase:
    d = c // 2
    return NlmCase(suite=NAME, label=f"{kind} B{b} C{c} d{d} {hw}x{hw}", device=device, dtype=dtype, mode=mode,
                   shapes=(("theta", (b, d, hw, hw)), ("phi", (b, d, hw, hw)), ("g", (b, c, hw, hw))),
                   kind=kind, flops=nlm_flops(kind, mode, b, c, d, hw * hw))


def median_case(device: str, dtype: torch.dtype, mode: str, b: int, c: int, hw: int) -> NlmCase:
    return NlmCase(suite=NAME, label=f"median B{b} C{c} {hw}x{hw}", device=device, dtype=dtype, mode=mode,
                   shapes=(("x", (b, c, hw, hw)),), kind="median")


def block_case(device: str, dtype: torch.dtype, stage: str, batch: int) -> NlmCase:
    values = block_modules(stage)[1]
    in_channels, in_size, out_size = block_sizes(stage)
    shape = (batch, in_channels, in_size, in_size)
    channels = values["1.conv.weight"].shape[0]  # the block's: C x out_size x out_size
    autocast = dtype in AUTOCAST_DTYPES
    return NlmCase(suite=NAME, label=f"block {stage} B{batch} C{channels} {out_size}x{out_size}", device=device,
                   dtype=dtype, mode="fwd+bwd",
                   shapes=(("x", shape), *((n, tuple(t.shape)) for n, t in values.items())),
                   params=tuple(values), input_dtypes=tuple((n, torch.float32) for n in values) if autocast else (),
                   kind="block", stage=stage)


def make_cases(device: str, dtypes: Iterable[torch.dtype], quick: bool) -> List[NlmCase]:
    dev = device_type(device)
    dtypes = list(dtypes)
    shapes = QUICK_GAUSSIAN_SHAPES if quick else [(b if dev == "cuda" else CPU_BATCH, c, hw)
                                                  for b, c, hw in GAUSSIAN_SHAPES]
    cases = [op_case("gaussian", device, dtype, mode, *shape)
             for mode in MODES for dtype in dtypes for shape in shapes]
    cases += [op_case("dot", device, dtype, "fwd+bwd", *shape) for dtype in dtypes for shape in shapes]
    cases += [median_case(device, dtype, mode, QUICK_BATCH if quick else b, c, hw)
              for mode in MODES for dtype in dtypes for b, c, hw in MEDIAN_SHAPES[dev]]
    block_batch = QUICK_BLOCK_BATCH if quick else BLOCK_BATCH[dev]
    cases += [block_case(device, dtype, stage, block_batch) for dtype in dtypes for stage in BLOCK_STAGES]
    return cases


def build_suite(device: str, dtypes: Optional[Iterable[torch.dtype]] = None, quick: bool = False) -> Suite:
    return Suite(
        name=NAME,
        cases=make_cases(device, dtypes or DEFAULT_DTYPES, quick),
        implementations={FUSED: fused, REFERENCE: reference, SDPA: sdpa, KERNEL: kernel,
                         COMPILED: compiled_builder(reference)},
        make_inputs=make_inputs,
        description="NLM gaussian/dot ops, median3x3, DenoisingBlock after a PreActResNet18 stage; "
                    "fused vs materialised eager, SDPA, torch.compile",
    )


# ----------------------------------------------------------------------------- extra metrics


class BuildRecorder:
    """Wraps a suite's builders to keep what each built for the case being run, so that the
    peak memory is measured on the same callables that were checked and timed (a compiled
    implementation is not compiled again)."""

    def __init__(self):
        self.built: Dict[str, Callable] = {}

    def wrap(self, suite: Suite) -> Suite:
        def recording(name, builder):
            def build(case):
                fn = builder(case)
                self.built[name] = fn
                return fn
            return build

        suite.implementations = {n: recording(n, b) for n, b in suite.implementations.items()}
        return suite


def cpu_peak_bytes(step: Callable[[], object]) -> int:
    """Peak of live bytes allocated by torch's CPU allocator during step(), above the start,
    from the allocation events of torch's profiler in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = step()
        del result
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def cuda_peak_bytes(step: Callable[[], object], device: str) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return peak


def measure_peak_memory(suite: Suite, case: NlmCase, fns: Dict[str, Callable], entries: dict) -> None:
    """peak_memory_bytes of every implementation that passed its check, one step each, on
    fresh inputs (the harness's, rebuilt from the same seed)."""
    inputs = harness.build_inputs(suite, case)
    grad_outputs = None
    for name, fn in fns.items():
        entry = entries.get(name, {})
        if not entry.get("correct"):
            continue
        try:
            if case.differentiated() and grad_outputs is None:
                with torch.no_grad():
                    outputs = harness.as_outputs(fn(*[inputs[n] for n in case.input_names]))
                grad_outputs = harness.make_grad_outputs(outputs)
                del outputs
            step = harness.make_step(case, fn, inputs, grad_outputs)
            step()  # warm: lazy initialisation is not the step's memory
            if device_type(case.device) == "cuda":
                entry["peak_memory_bytes"] = cuda_peak_bytes(step, case.device)
            else:
                entry["peak_memory_bytes"] = cpu_peak_bytes(step)
        except Exception as exc:
            entry["peak_memory_bytes"] = None
            entry["peak_memory_error"] = harness.error_text(exc, 300)


def add_flop_rates(record: dict, case: NlmCase) -> None:
    record["flops"] = case.flops
    for entry in record["implementations"].values():
        seconds = entry.get("median_s")
        entry["tflops"] = case.flops / seconds / 1e12 if case.flops and seconds else None


def fused_path(case: NlmCase) -> str:
    """The path fastrobust.ops.nlm_gaussian takes in the case's "fused" step (its gradient
    taken in fwd+bwd): "kernel", "sdpa", "materialize" or "reference" (no compiled op)."""
    from fastrobust.ops import nlm_dispatch

    shapes = dict(case.shapes)
    if case.kind == "gaussian":
        (b, d, h, w), c = shapes["theta"], shapes["g"][1]
    else:  # the block's non-local means: the embedded layer's (d = C / 2) on the stage's output
        size = block_sizes(case.stage)[2]
        b, c, h, w = shapes["x"][0], shapes["1.conv.weight"][0], size, size
        d = c // 2
    decision = nlm_dispatch.decide_on(torch.device(case.device), case.dtype, b, d, c, h * w, case.mode == "fwd+bwd")
    return nlm_dispatch.built_path(decision.path)


def run_nlm_case(suite: Suite, recorder: BuildRecorder, case: NlmCase, options: harness.Options,
                 copy_gbps: Optional[float]) -> dict:
    recorder.built.clear()
    record = harness.run_case(suite, case, options, copy_gbps)
    record["kind"] = case.kind
    if case.kind in ("gaussian", "block"):
        record["path"] = fused_path(case)
    add_flop_rates(record, case)
    measure_peak_memory(suite, case, dict(recorder.built), record["implementations"])
    recorder.built.clear()
    if device_type(case.device) == "cuda":
        torch.cuda.empty_cache()  # the next case gets the memory of this one's (N x N) temporaries
    return record


def run_suite(device: str, dtypes: Optional[Iterable[torch.dtype]], options: harness.Options) -> dict:
    """results.run_suite with the flop rates and peak memory of every case."""
    recorder = BuildRecorder()
    suite = recorder.wrap(build_suite(device, dtypes, options.quick))
    copy_gbps = harness.measure_copy_bandwidth(device)
    metadata = results.collect_metadata(device, options)
    metadata.update(float32_matmul_precision=torch.get_float32_matmul_precision(),
                    cuda_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    result = {"suite": NAME, "description": suite.description, "device": device, "metadata": metadata,
              "copy_bandwidth_gbps": copy_gbps,
              "tolerances": {harness.dtype_name(d): t for d, t in harness.TOLERANCES.items()},
              "flops_convention": "gaussian: fwd 2*B*N^2*(d+C), bwd 2.5x fwd; dot: fwd 2*B*N^2*(d+C), "
                                  "bwd 2x fwd; median, block: not counted",
              "peak_memory_method": ("torch.cuda.max_memory_allocated above the step's start"
                                     if device_type(device) == "cuda" else
                                     "torch.profiler allocation events of torch's CPU allocator, running sum"),
              "complete": False, "cases": []}
    for i, case in enumerate(suite.cases, 1):
        if options.verbose:
            print(f"[{NAME} {i}/{len(suite.cases)}] {case.name}", file=sys.stderr, flush=True)
        result["cases"].append(run_nlm_case(suite, recorder, case, options, copy_gbps))
        write_data(result, options)
    result["complete"] = True
    return result


# ----------------------------------------------------------------------------- output

CSV_COLUMNS = results.CSV_COLUMNS + ["flops", "tflops", "peak_memory_bytes"]


def csv_rows(result: dict):
    by_case = {c["case"]: c for c in result["cases"]}
    for row in results.csv_rows(result):
        case = by_case[row["case"]]
        entry = case["implementations"].get(row.get("impl"), {})
        yield dict(row, flops=case.get("flops"), tflops=entry.get("tflops"),
                   peak_memory_bytes=entry.get("peak_memory_bytes"))


def paths(options: harness.Options, device: str) -> Dict[str, object]:
    return {ext: results.output_path(options.out_dir, NAME, device, ext, options.quick) for ext in ("json", "csv", "png")}


def write_data(result: dict, options: harness.Options) -> None:
    p = paths(options, result["device"])
    results.write_json(result, p["json"])
    results.write_csv(result, p["csv"], CSV_COLUMNS, csv_rows)


def format_extra_table(result: dict) -> str:
    """TFLOP/s and peak memory (MiB) per case and implementation."""
    impls = list(dict.fromkeys(n for c in result["cases"] for n in c["implementations"]))
    header = ["case"] + [f"{n} TFLOP/s" for n in impls] + [f"{n} MiB" for n in impls]
    rows = [header]
    for case in result["cases"]:
        entries = [case["implementations"].get(n, {}) for n in impls]
        rows.append([case["case"]]
                    + [results._fmt(e.get("tflops"), ".2f") for e in entries]
                    + [results._fmt(e.get("peak_memory_bytes"), ".1f", scale=2.0 ** -20) for e in entries])
    legend = (f"TFLOP/s at the case's flop count ({result['flops_convention']}); MiB: peak memory of one step "
              f"above its start ({result['peak_memory_method']})")
    return "\n".join(results.align(rows) + [legend])


def run(device: str, dtypes: Optional[List[torch.dtype]], options: harness.Options) -> bool:
    """Runs the suite, writes JSON/CSV/PNG, prints the tables; True when every check passed."""
    start = time.perf_counter()
    result = run_suite(device, dtypes, options)
    result["wall_time_s"] = time.perf_counter() - start
    write_data(result, options)
    p = paths(options, device)
    note = results.plot_speedups(result, p["png"])
    print(results.format_table(result))
    print(format_extra_table(result))
    print(f"{NAME}: {len(result['cases'])} cases in {result['wall_time_s']:.0f} s")
    for kind in ("json", "csv"):
        print(f"  {kind}: {p[kind]}")
    print(f"  png: {note or p['png']}")
    return all(results.check_summary(c) == "ok" for c in result["cases"])
