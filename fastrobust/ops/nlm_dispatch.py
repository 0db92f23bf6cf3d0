"""Which implementation computes nlm_gaussian: our kernel or torch's scaled_dot_product_attention.

Softmax non-local means is one-head attention with queries theta, keys phi and values g. Our
kernel exists for what SDPA cannot do (a value width C other than the key width d without
padding, fp32 and fp64 without materialising the N x N affinity, the log-sum-exp output of
`torch.ops.fastrobust.nlm_gaussian`); where SDPA can compute the same y, its fused kernels
(FlashAttention-2, memory-efficient attention, cuDNN) do the work once where ours recomputes
the logits per output slice. `backend="auto"` picks by a model:

- SDPA is a candidate on a CUDA GPU of compute capability 8.0 or newer, for float16 and
  bfloat16, with N, B > 0. It runs on (B, 1, N, D) copies whose widths are zero-padded to
  D = max(d, C) rounded up to 8 (equal widths and 16-byte rows: what the fused SDPA kernels
  accept; zero columns add nothing to the logits, and y drops the padded channels).
- The model is the H100 roofline (fastrobust.roofline: max(bytes / HBM bandwidth, FLOPs /
  peak)) of the forward, plus the backward when a gradient will be taken. Our kernel: the
  tensor-core work and the bytes of its launches (kernel_flops, kernel_bytes: the emulator's
  counts of its launches, which a test holds them to). SDPA: FlashAttention-2's work on the padded
  problem (two GEMMs forward, five backward) and the bytes of the padding copies and of its
  inputs and outputs. SDPA runs where its modeled time is lower.
- Everything else runs our kernel (the pure-PyTorch reference where the extension is not built).

`backend="kernel"` and `backend="sdpa"` force a path (SDPA on any device and dtype). The model
is a model: it counts work and bytes, not the achieved efficiency of either kernel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..roofline import roofline_us
from ._registration import has_op

BACKENDS = ("auto", "kernel", "sdpa")
SDPA_DTYPES = (torch.float16, torch.bfloat16)
SDPA_MIN_CAPABILITY = (8, 0)
SDPA_WIDTH_MULTIPLE = 8  # 16-byte rows of 16-bit values

# The tensor-core kernels' tiles (csrc/cuda/nlm_wmma_kernels.cuh): a block owns 64 positions and
# walks the others 32 at a time; reductions run in chunks of 32 rows; the one-pass forward
# writes 64 output columns, the slice kernels 128.
OWN_TILE, OTHER_TILE, CHUNK, ONE_PASS_WIDTH, SLICE_WIDTH = 64, 32, 32, 64, 128


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")


def kernel_flops(b: int, d: int, c: int, n: int, backward: bool) -> int:
    """FLOPs (2 per multiply-add) of our tensor-core kernels' launches for one forward, or one
    backward: every tile product counted whole (padded to the tiles above)."""
    own, other = _round_up(n, OWN_TILE), _round_up(n, OTHER_TILE)
    dp, cp = _round_up(d, CHUNK), _round_up(c, CHUNK)
    plane = 2 * b * own * other  # one multiply-add per (own, other) pair and reduction row
    if not backward:
        if c <= ONE_PASS_WIDTH:  # one pass: S, then P g^T for 64 columns
            return plane * (dp + ONE_PASS_WIDTH)
        # the log-sum-exp pass (S), then y in slices of 128 channels, each recomputing S
        return plane * dp + plane * math.ceil(c / SLICE_WIDTH) * (dp + SLICE_WIDTH)
    work = plane * math.ceil(c / SLICE_WIDTH) * (dp + SLICE_WIDTH) if c > 0 else 0  # dg: S, P^T dy
    if d > 0:  # dphi and dtheta: S, dP = dy . g and dS x per slice of 128 of the d columns
        work += 2 * plane * math.ceil(d / SLICE_WIDTH) * (dp + cp + SLICE_WIDTH)
    return work


def padded_width(d: int, c: int) -> int:
    return _round_up(max(d, c, 1), SDPA_WIDTH_MULTIPLE)


def sdpa_flops(b: int, d: int, c: int, n: int, backward: bool) -> int:
    """FlashAttention-2's FLOPs on the padded problem: S and P V forward; S again, dP, dV, dQ,
    dK backward."""
    width = padded_width(d, c)
    return 2 * b * n * n * width * (5 if backward else 2)


def kernel_bytes(b: int, d: int, c: int, n: int, backward: bool, element: int) -> int:
    """Bytes our kernels' launches move, each launch reading what its blocks read once (the
    cost model's view: a block's re-reads of the other positions hit L2): every output slice
    reads theta and phi again, as the slices recompute the logits. The float32 lse and row
    scalars (4 bytes a row) count where the emulator counts them: written by the forward's
    one pass and read by the backward's row pass."""
    tp, values, key_half, lse = 2 * b * d * n * element, b * c * n * element, b * d * n * element, 4 * b * n
    c_slices, d_slices = math.ceil(c / SLICE_WIDTH), math.ceil(d / SLICE_WIDTH)
    if not backward:
        if c <= ONE_PASS_WIDTH:
            return tp + values + values + lse  # theta, phi, g; y, lse
        return tp + (c_slices * tp + values + values)  # the lse pass; the y slices
    row_dot = 2 * values + lse  # dy . y per row
    grad_g = (c_slices * tp + 2 * values) if c > 0 else 0  # theta, phi per slice; dy; dg
    grad_keys = 2 * (d_slices * (tp + 2 * values) + key_half) if d > 0 else 0  # dphi, dtheta
    return row_dot + grad_g + grad_keys


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


@dataclass(frozen=True)
class Decision:
    path: str  # "kernel" or "sdpa"
    reason: str
    kernel_us: Optional[float] = None  # modeled (H100 roofline), forward (+ backward)
    sdpa_us: Optional[float] = None


def modeled_us(path: str, dtype: torch.dtype, b: int, d: int, c: int, n: int, backward: bool) -> float:
    """The H100 roofline model of one forward (+ one backward) on `path`, in microseconds."""
    flops, nbytes = (kernel_flops, kernel_bytes) if path == "kernel" else (sdpa_flops, sdpa_bytes)
    name, element = str(dtype).replace("torch.", ""), torch.empty((), dtype=dtype).element_size()
    passes = (False, True) if backward else (False,)
    return sum(roofline_us(nbytes(b, d, c, n, bwd, element), flops(b, d, c, n, bwd), name) for bwd in passes)


def decide(device_type: str, dtype: torch.dtype, capability: Optional[Tuple[int, int]], b: int, d: int, c: int,
           n: int, backward: bool) -> Decision:
    """backend="auto"'s choice for a problem of this kind and size (see the module docstring)."""
    if device_type != "cuda":
        return Decision("kernel", f"SDPA is chosen on CUDA GPUs only (device {device_type})")
    if dtype not in SDPA_DTYPES:
        return Decision("kernel", f"SDPA is chosen for float16 and bfloat16 only (dtype {dtype})")
    if capability is None or tuple(capability) < SDPA_MIN_CAPABILITY:
        return Decision("kernel", f"the fused SDPA kernels need compute capability 8.0 (GPU {capability})")
    if min(b, n) == 0:
        return Decision("kernel", "empty input")
    kernel_us = modeled_us("kernel", dtype, b, d, c, n, backward)
    sdpa_us = modeled_us("sdpa", dtype, b, d, c, n, backward)
    if sdpa_us < kernel_us:
        return Decision("sdpa", "modeled cheaper on SDPA", kernel_us, sdpa_us)
    return Decision("kernel", "modeled cheaper on the kernel", kernel_us, sdpa_us)


def decide_on(device: torch.device, dtype: torch.dtype, b: int, d: int, c: int, n: int, backward: bool) -> Decision:
    """decide() for a device (a CUDA device's compute capability read from it)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return decide(device.type, dtype, capability, b, d, c, n, backward)


def built_path(path: str) -> str:
    """path as it runs in this build: "reference" for the kernel where the extension has no
    nlm_gaussian op (nlm_gaussian falls back to the materialising reference)."""
    return path if path == "sdpa" or has_op("fastrobust", "nlm_gaussian") else "reference"


def _problem(theta: torch.Tensor, g: torch.Tensor) -> Tuple[int, int, int, int]:
    n = 1
    for s in theta.shape[2:]:
        n *= s
    return theta.shape[0], theta.shape[1], g.shape[1], n


def choose(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor, backend: str = "auto") -> str:
    """"kernel" or "sdpa": the path nlm_gaussian takes for these (checked) inputs; a gradient
    counts where grad mode is on and an input requires one."""
    check_backend(backend)
    if backend != "auto":
        return backend
    backward = torch.is_grad_enabled() and any(t.requires_grad for t in (theta, phi, g))
    return decide_on(theta.device, theta.dtype, *_problem(theta, g), backward).path
