"""Which implementation computes nlm_gaussian: our kernel, torch's scaled_dot_product_attention
or the materialising composition (logits, softmax, product).

Softmax non-local means is one-head attention with queries theta, keys phi and values g. Our
kernel returns the log-sum-exp that `torch.ops.fastrobust.nlm_gaussian` exposes, and its
tensor-core kernels keep no N x N plane. On the GPU, though, it was not the fastest way to y
when a GPU last timed it: on an H200 (benchmarks/results/nlm-cuda.json) its tensor-core path
reached 1-2 % of the roofline below, its fp32 path about 10 %, where cuBLAS behind the
materialising composition reached 33 % (16-bit) and 51 % (fp32) and SDPA's fused kernels 24 %.
`backend="auto"` picks by that measurement:

- On a CUDA GPU each candidate's time is expected to be its roofline (fastrobust.roofline:
  max(bytes / HBM bandwidth, FLOPs / peak), forward plus backward when a gradient will be
  taken) over its efficiency measured on the H200 for that pass (MEASURED_EFFICIENCY: the
  median, over the nlm suite's gaussian shapes, of roofline / measured time), and the least
  expected time runs.
  The candidates:
  - "kernel": always. Its work and bytes are those of its launches (kernel_flops,
    kernel_bytes: the emulator's counts, which a test holds them to). Its efficiencies are
    those of the kernels the H200 ran (commit 1cb7f70), which recomputed the logits in every
    128-column output slice; applied here to the work of today's kernels (forward and backward
    on mma.sync with their accumulators in registers, each output slice of up to 1024 columns
    forming the logits again, dg and dphi in one kernel where C <= 512 and d <= 256, no planes)
    until a GPU measures them.
  - "sdpa": float16 and bfloat16 on compute capability 8.0 or newer, with N, B > 0 and a padded
    width of at most 512 (at 1024, SDPA measured 3-12 % of its roofline on the H200). It
    runs on (B, 1, N, D) copies whose widths are zero-padded to D = max(d, C) rounded up to 8
    (zero columns add nothing to the logits, and y drops the padded channels); its work is
    FlashAttention-2's on the padded problem (two GEMMs forward, five backward).
  - "materialize": float16, bfloat16 and float32 while the B x N x N logits take at most 1/16
    of the GPU's memory (MATERIALIZE_MAX_BYTES where that is unknown; autograd keeps the softmax
    for the backward). Two batched GEMMs
    and a softmax forward, four GEMMs and the softmax's gradient backward.
- On the CPU our kernel runs (the pure-PyTorch reference where the extension is not built).

`backend="kernel"`, `"sdpa"` and `"materialize"` force a path (on any device and dtype). The
efficiencies are one GPU's measurement at the benchmark shapes, not a law: re-measure them
with benchmarks/gpu_check.sh when the kernel changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ..dtypes import torch_dtype_name
from ..roofline import roofline_us
from ._registration import has_op

BACKENDS = ("auto", "kernel", "sdpa", "materialize")
SDPA_DTYPES = (torch.float16, torch.bfloat16)
SDPA_MIN_CAPABILITY = (8, 0)
SDPA_WIDTH_MULTIPLE = 8  # 16-byte rows of 16-bit values
SDPA_MAX_WIDTH = 512  # measured: at a padded width of 1024 SDPA reached 3-12 % of its roofline
MATERIALIZE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MATERIALIZE_MAX_BYTES = 1 << 30  # the B x N x N logits, in the inputs' dtype, where the GPU's memory is unknown
MATERIALIZE_MEMORY_FRACTION = 16  # else at most 1/16 of it: the backward holds about four such matrices

# roofline / measured time on an NVIDIA H200 (torch 2.11, CUDA 13.0), per path, "16" for
# float16/bfloat16 or "32" for float32, and pass: the median over the nlm suite's four gaussian
# shapes in benchmarks/results/nlm-cuda.json (commit 1cb7f70) of the forward's roofline over
# its time, and of the backward's roofline over the forward + backward's time less the
# forward's. The kernel's 16-bit figures leave out the two shapes where auto already ran SDPA,
# SDPA's the shape whose padded width (1024) is over SDPA_MAX_WIDTH.
MEASURED_EFFICIENCY = {
    ("kernel", "16", "forward"): 0.019, ("kernel", "16", "backward"): 0.018,
    ("kernel", "32", "forward"): 0.121, ("kernel", "32", "backward"): 0.087,
    ("sdpa", "16", "forward"): 0.244, ("sdpa", "16", "backward"): 0.302,
    ("materialize", "16", "forward"): 0.442, ("materialize", "16", "backward"): 0.225,
    ("materialize", "32", "forward"): 0.541, ("materialize", "32", "backward"): 0.466,
}

# The tensor-core kernels' tiles (csrc/cuda/nlm_mma_forward*.cuh, nlm_mma_backward*.cuh): a block
# owns 64 positions (but for the wide kernels and the fused dg and dphi below) and walks the
# others 32 at a time (16 for fp32 on tf32, whose tiles take twice the bytes), its reductions in
# chunks of 32 rows, its output in tiles of 8 columns, on one block 64, 128 or 256 columns wide
# (the narrowest that holds the output; the tf32 backward's blocks stop at 128: BACKWARD_SLICE).
OWN_TILE, CHUNK, ONE_PASS_WIDTH, ONE_PASS_TILE = 64, 32, 256, 8
ONE_PASS_KEYS = {2: 32, 4: 16}  # by element size
# Above their widest narrow slice (ONE_PASS_WIDTH; the tf32 backward's 128) the kernels take
# their wide forms (forward_wide_kernel, backward_wide_kernel): blocks of 256 columns and 128 own
# positions (the tf32 backward up to 256 columns), of 512 and 64, or slices of 1024 columns and
# 32 positions, each logit (and dp) formed once per slice, the others WIDE_KEYS at a time.
WIDE_ROWS, WIDE_KEYS = {256: 128, 512: 64, 1024: 32}, 32
BACKWARD_SLICE = {2: 256, 4: 128}  # the backward's widest narrow block, by element size
# The tensor-core backward forms dg and dphi in one kernel (fused_key_gradients_kernel) where d
# and C are at most these: each entry's logit and dp once for both; its blocks own the keys (64
# or 32) the widths map to and walk the queries FUSED_QUERIES at a time.
FUSED_KEY_TILES = ((128, 256, 64), (256, 512, 32))  # (d at most, C at most, keys per block)
FUSED_QUERIES = 32
# The backward's D_i = dy_i . y_i comes in partial sums over groups of channels (row_dot_kernel,
# csrc/cuda/nlm_kernels.cuh): C / 64 groups, 1 to 16.
ROW_DOT_CHANNELS_PER_GROUP, ROW_DOT_MAX_GROUPS = 64, 16


def row_dot_groups(c: int) -> int:
    return min(max(c // ROW_DOT_CHANNELS_PER_GROUP, 1), ROW_DOT_MAX_GROUPS)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def fused_key_tile(d: int, c: int, element: int) -> int:
    """The keys per block of the kernel that forms the backward's dg and dphi together, or 0
    where separate kernels form them (fused_key_tile, csrc/cuda/nlm_mma_backward.cuh)."""
    if d <= 0 or c <= 0:
        return 0
    return next((keys for max_d, max_c, keys in FUSED_KEY_TILES if d <= max_d and c <= max_c), 0)


def fuses_key_gradients(d: int, c: int, element: int) -> bool:
    """Whether the backward's dg and dphi come from one kernel."""
    return fused_key_tile(d, c, element) > 0


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")


def output_slices(width: int, element: int, widest: int = ONE_PASS_WIDTH) -> List[Tuple[int, int, int]]:
    """(columns, own positions per block, other positions per tile) of each slice of a
    tensor-core kernel's output `width` wide, of inputs of `element` bytes: one block of its
    narrow kernels up to `widest` columns (ONE_PASS_KEYS a tile), or above that the wide
    kernels' one block of 256 or 512 columns or slices of 1024 (WIDE_ROWS), WIDE_KEYS a tile."""
    if width > widest:
        block = next((w for w in (256, 512) if width <= w), 1024)
        return [(min(block, width - s * block), WIDE_ROWS[block], WIDE_KEYS) for s in range(math.ceil(width / block))]
    return [(width, OWN_TILE, ONE_PASS_KEYS[element])]


def kernel_flops(b: int, d: int, c: int, n: int, backward: bool, element: int = 2) -> int:
    """FLOPs (2 per multiply-add) of our tensor-core kernels' launches for one forward, or one
    backward, of inputs of `element` bytes (2: fp16 / bf16, 4: fp32 on tf32): every tile product
    counted whole (padded to the tiles above). Each block of a slice forms the logits of its tile
    pairs (d deep) and, for dphi and dtheta, dp = dy . g (C deep), then its output's 8-column
    tiles (output_slices); where fuses_key_gradients, dg and dphi's one kernel forms the logits
    and dp once for both."""
    dp, cp = _round_up(d, CHUNK), _round_up(c, CHUNK)

    def work(width: int, depth: int, widest: int) -> int:  # each slice: depth, then its columns
        if width <= 0:
            return 0
        return sum(2 * b * _round_up(n, rows) * _round_up(n, keys) * (depth + _round_up(w, ONE_PASS_TILE))
                   for w, rows, keys in output_slices(width, element, widest))

    if not backward:  # y: S, then P g^T
        return work(c, dp, ONE_PASS_WIDTH)
    widest = BACKWARD_SLICE[element]
    ds = work(d, dp + cp, widest)  # S and dP, then dS^T theta (dS phi)
    own = fused_key_tile(d, c, element)
    if own:  # dg and dphi from one slice of blocks of `own` keys, S and dP formed once; dtheta's
        fused = dp + cp + _round_up(c, ONE_PASS_TILE) + _round_up(d, ONE_PASS_TILE)
        return 2 * b * _round_up(n, own) * _round_up(n, FUSED_QUERIES) * fused + ds
    return work(c, dp, widest) + 2 * ds  # dg: S, then P^T dy


def padded_width(d: int, c: int) -> int:
    return _round_up(max(d, c, 1), SDPA_WIDTH_MULTIPLE)


def sdpa_flops(b: int, d: int, c: int, n: int, backward: bool) -> int:
    """FlashAttention-2's FLOPs on the padded problem: S and P V forward; S again, dP, dV, dQ,
    dK backward."""
    width = padded_width(d, c)
    return 2 * b * n * n * width * (5 if backward else 2)


def kernel_bytes(b: int, d: int, c: int, n: int, backward: bool, element: int) -> int:
    """Bytes our tensor-core kernels' launches move in the cost model's view: a launch reads
    once what one row of its grid reads (blockIdx.x varies, a block's re-reads of what its row
    shares hit L2), times its rows; a row is an output slice of one sample. Each row reads
    theta and phi (the logits), for dphi and dtheta also dy and g (dp) and the lse and D of
    every row; it writes its slice of the output. The forward's lse (written through a plain
    pointer) is not counted, as the emulator does not count it."""
    tp, values, lse = 2 * b * d * n * element, b * c * n * element, 4 * b * n
    if not backward:  # each slice: theta and phi; g read and y written once over the slices
        return len(output_slices(c, element)) * tp + values + values
    widest, groups = BACKWARD_SLICE[element], row_dot_groups(c)
    row_dot = 2 * values + groups * lse  # dy . y per row, a partial sum per group of channels
    # dg's slices: theta, phi and the lse; dy read and dg written once over the slices
    dg = len(output_slices(c, element, widest)) * (tp + lse) + 2 * values if c > 0 else 0
    # dphi's (dtheta's) slices: theta, phi, dy, g, the lse and D's partial sums; the output once
    ds = len(output_slices(d, element, widest)) * (tp + 2 * values + (1 + groups) * lse) + tp // 2 if d > 0 else 0
    if fuses_key_gradients(d, c, element):  # dphi's reads, and dg written
        return row_dot + ds + values + ds
    return row_dot + dg + 2 * ds


def sdpa_bytes(b: int, d: int, c: int, n: int, backward: bool, element: int) -> int:
    """Bytes of the SDPA path: the padded (B, 1, N, D) copies of the (B, width, N) inputs, the
    fused kernels' inputs and outputs (FlashAttention-2's: the backward's dq accumulated in
    float32, a pass for dy . y before it and one converting dq after), y (the gradients)
    copied back."""
    wide, lse = b * n * padded_width(d, c) * element, 4 * b * n
    wide32 = b * n * padded_width(d, c) * 4
    tp, values = 2 * b * d * n * element, b * c * n * element
    if not backward:
        copies_in = tp + values + 3 * wide
        attention = 3 * wide + wide + lse  # q, k, v; out, lse
        return copies_in + attention + (wide + values)
    copies_in = values + wide  # dy, padded
    preprocess = 2 * wide + lse  # dy . out per row
    attention = 5 * wide + 2 * lse + 2 * wide + 2 * wide32  # q, k, v, out, dout, lse, the row sums; dk, dv; dq
    postprocess = wide32 + wide
    return copies_in + preprocess + attention + postprocess + (3 * wide + tp + values)


def materialize_flops(b: int, d: int, c: int, n: int, backward: bool) -> int:
    """The materialising composition's GEMMs: S = theta^T phi and y = g P^T forward; dg, dP,
    dtheta and dphi backward."""
    return 2 * b * n * n * (d + c) * (2 if backward else 1)


def materialize_bytes(b: int, d: int, c: int, n: int, backward: bool, element: int) -> int:
    """Its inputs and outputs once, and the N x N matrices through memory: forward S written,
    the softmax reading it and writing P, the product reading P; backward dP written and read,
    P read twice, dS written and read twice."""
    io, plane = (2 * b * d * n + 2 * b * c * n) * element, b * n * n * element
    return 2 * io + 7 * plane if backward else io + 4 * plane


WORK_MODELS = {"kernel": (kernel_flops, kernel_bytes), "sdpa": (sdpa_flops, sdpa_bytes),
               "materialize": (materialize_flops, materialize_bytes)}


@dataclass(frozen=True)
class Decision:
    path: str  # "kernel", "sdpa" or "materialize"
    reason: str
    # each candidate's expected time, forward (+ backward), in microseconds: its roofline over
    # its measured efficiency (empty where there was nothing to choose)
    expected_us: Dict[str, float] = field(default_factory=dict)


def pass_roofline_us(path: str, dtype: torch.dtype, b: int, d: int, c: int, n: int, backward: bool) -> float:
    """The H100 roofline of the forward (backward=False) or the backward alone on `path`, in
    microseconds: a bound that assumes the path runs at peak."""
    flops, nbytes = WORK_MODELS[path]
    name, element = torch_dtype_name(dtype), torch.empty((), dtype=dtype).element_size()
    work = flops(b, d, c, n, backward, element) if path == "kernel" else flops(b, d, c, n, backward)
    return roofline_us(nbytes(b, d, c, n, backward, element), work, name)


def modeled_us(path: str, dtype: torch.dtype, b: int, d: int, c: int, n: int, backward: bool) -> float:
    """The H100 roofline of one forward (+ one backward) on `path`, in microseconds."""
    passes = (False, True) if backward else (False,)
    return sum(pass_roofline_us(path, dtype, b, d, c, n, bwd) for bwd in passes)


def expected_us(path: str, dtype: torch.dtype, b: int, d: int, c: int, n: int, backward: bool) -> float:
    """Each pass's roofline over the path's efficiency measured on the H200 for that pass
    (MEASURED_EFFICIENCY), summed: the forward (+ the backward)."""
    width = "32" if dtype == torch.float32 else "16"
    passes = (False, True) if backward else (False,)
    return sum(pass_roofline_us(path, dtype, b, d, c, n, bwd) /
               MEASURED_EFFICIENCY[(path, width, "backward" if bwd else "forward")] for bwd in passes)


def candidates(dtype: torch.dtype, capability: Optional[Tuple[int, int]], b: int, d: int, c: int,
               n: int, memory_bytes: Optional[int] = None) -> Tuple[str, ...]:
    """The paths auto weighs on a CUDA GPU (of memory_bytes, if known) for this problem (the
    kernel always)."""
    found = ["kernel"]
    if (dtype in SDPA_DTYPES and capability is not None and tuple(capability) >= SDPA_MIN_CAPABILITY
            and padded_width(d, c) <= SDPA_MAX_WIDTH):
        found.append("sdpa")
    element = torch.empty((), dtype=dtype).element_size()
    cap = MATERIALIZE_MAX_BYTES if memory_bytes is None else memory_bytes // MATERIALIZE_MEMORY_FRACTION
    if dtype in MATERIALIZE_DTYPES and b * n * n * element <= cap:
        found.append("materialize")
    return tuple(found)


def decide(device_type: str, dtype: torch.dtype, capability: Optional[Tuple[int, int]], b: int, d: int, c: int,
           n: int, backward: bool, memory_bytes: Optional[int] = None) -> Decision:
    """backend="auto"'s choice for a problem of this kind and size (see the module docstring)."""
    if device_type != "cuda":
        return Decision("kernel", f"the kernel runs on the CPU (device {device_type})")
    if min(b, n) == 0:
        return Decision("kernel", "empty input")
    paths = candidates(dtype, capability, b, d, c, n, memory_bytes)
    if len(paths) == 1:
        return Decision("kernel", f"no other path for {dtype} at this size (GPU capability {capability})")
    times = {path: expected_us(path, dtype, b, d, c, n, backward) for path in paths}
    best = min(times, key=times.get)
    return Decision(best, "expected fastest, by the efficiencies measured on an H200", times)


def decide_on(device: torch.device, dtype: torch.dtype, b: int, d: int, c: int, n: int, backward: bool) -> Decision:
    """decide() for a device (a CUDA device's compute capability and memory read from it: the
    properties are cached by torch, no synchronisation)."""
    if device.type != "cuda":
        return decide(device.type, dtype, None, b, d, c, n, backward)
    props = torch.cuda.get_device_properties(device)
    return decide("cuda", dtype, (props.major, props.minor), b, d, c, n, backward, props.total_memory)


def built_path(path: str) -> str:
    """path as it runs in this build: "reference" for the kernel where the extension has no
    nlm_gaussian op (nlm_gaussian falls back to the materialising reference)."""
    return path if path != "kernel" or has_op("fastrobust", "nlm_gaussian") else "reference"


def _problem(theta: torch.Tensor, g: torch.Tensor) -> Tuple[int, int, int, int]:
    n = 1
    for s in theta.shape[2:]:
        n *= s
    return theta.shape[0], theta.shape[1], g.shape[1], n


def choose(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor, backend: str = "auto") -> str:
    """"kernel", "sdpa" or "materialize": the path nlm_gaussian takes for these (checked) inputs; a gradient
    counts where grad mode is on and an input requires one."""
    check_backend(backend)
    if backend != "auto":
        return backend
    backward = torch.is_grad_enabled() and any(t.requires_grad for t in (theta, phi, g))
    return decide_on(theta.device, theta.dtype, *_problem(theta, g), backward).path
