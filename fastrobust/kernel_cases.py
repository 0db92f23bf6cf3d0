"""The op calls at the CUDA benchmark shapes that the kernel tools run through the emulator
(fastrobust.kernel_resources: launch configurations; fastrobust.cost_model: memory traffic),
with what each op must at least move and compute, and what the baseline it replaces moves.

Minimal bytes: the op's inputs read once and its outputs written once. Minimal FLOPs: the
op's arithmetic counted as multiply-adds x 2 where it is a product (NLM: 2 GEMMs forward,
5 backward; Sparta: the depthwise conv), 0 for element-wise ops. Baseline bytes: the eager
composition's kernels, each reading its inputs and writing its output once (the PyTorch
reference in fastrobust.reference, and torchattacks' form of the PGD step); for NLM, the
minimal traffic of a fused attention kernel (SDPA/FlashAttention). None where not modelled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from .dtypes import torch_dtype_name

# The CUDA benchmark shapes (benchmarks/bench_*.py; tests/test_kernel_resources.py checks that
# these still match them): CIFAR ResNet-18 stages for Sparta, the NLM gaussian shapes and the
# median shape, CIFS at ResNet-18 layer4 and ResNet-50's last stage, the PGD step rows.
SPARTA_STAGES = ((64, 32), (128, 16), (256, 8), (512, 4))  # (channels, H = W)
SPARTA_BATCH = 256
SPARTA_K = 3
NLM_GAUSSIAN_SHAPES = ((64, 256, 32), (32, 256, 56), (128, 512, 16), (8, 1024, 28))  # (B, C, H = W)
MEDIAN_SHAPES = ((128, 256, 32),)
CIFS_SHAPES = ((128, 512, 4), (256, 512, 4), (64, 2048, 7))  # (B, C, H = W)
PGD_ROWS = 512
PGD_IMAGE = (3, 32, 32)
MARGIN_SHAPES = ((512, 10), (128, 1000))  # (rows, classes)
LAYER_DTYPES = (torch.float32, torch.bfloat16)

# The ops of each benchmark suite (benchmarks/run.py's names).
SUITE_OPS = {
    "sparta": ("sparta",),
    "nlm": ("nlm_gaussian", "median3x3"),
    "cifs": ("cifs_reweight",),
    "pgd": ("pgd_step_", "apgd_step_", "pgd_random_init_", "pgd_update_best_", "margin_loss"),
}


@dataclass
class OpCase:
    op: str
    direction: str  # "fwd" or "bwd"
    dtype: str
    shape: tuple  # the main tensor's
    fn: Callable[[], object]  # calls the emulated op
    min_bytes: int
    min_flops: int
    baseline: Optional[str]  # what the op replaces
    baseline_bytes: Optional[int]
    # Work that depends on the data (which rows a block copies): the model runs every block,
    # as a sample of blocks would estimate it badly.
    every_block: bool = False
    # Repeated launches differ only in the data they cover (NLM's batch chunks, every sample
    # at a sector-aligned offset): the model runs each distinct launch once (cost_model.model).
    repeats_alike: bool = False
    # "tf32": fp32 inputs whose products run on tensor cores as tf32 (fn enables it); their
    # tensor-core FLOPs are modelled at the tf32 peak (fastrobust.roofline). None: as dtype says.
    math: Optional[str] = None

    @property
    def label(self) -> str:
        direction = {"fwd": "", "bwd": " backward"}.get(self.direction, f" {self.direction}")
        math = f" {self.math}" if self.math else ""
        return f"{self.op}{direction} {self.dtype}{math} {self.shape}"


def with_tf32(fn: Callable[[], object]) -> Callable[[], object]:
    """fn run with fp32 matrix products allowed to use tf32 on CUDA
    (torch.backends.cuda.matmul.fp32_precision = "tf32", restored after)."""
    def call():
        before = torch.backends.cuda.matmul.fp32_precision
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        try:
            return fn()
        finally:
            torch.backends.cuda.matmul.fp32_precision = before
    return call


def _bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def launch_cases() -> List[OpCase]:
    """One case per op call at the CUDA benchmark shapes: zero-filled inputs, a tensor of its
    own for every argument (the cost model counts distinct memory)."""
    emu = torch.ops.fastrobust_emu
    cases: List[OpCase] = []

    def add(op, direction, x, fn, reads, writes, flops=0, baseline=None, baseline_bytes=None, every_block=False,
            repeats_alike=False, math=None):
        dt = torch_dtype_name(x.dtype)
        cases.append(OpCase(op, direction, dt, tuple(x.shape), with_tf32(fn) if math == "tf32" else fn,
                            _bytes(*reads) + _bytes(*writes), int(flops), baseline,
                            None if baseline_bytes is None else int(baseline_bytes), every_block, repeats_alike,
                            math))

    for dtype in LAYER_DTYPES:
        def zeros(*shape, dtype=dtype):
            return torch.zeros(shape, dtype=dtype)

        for c, hw in SPARTA_STAGES:
            x, gy = zeros(SPARTA_BATCH, c, hw, hw), zeros(SPARTA_BATCH, c, hw, hw)
            w, b = zeros(c, 1, SPARTA_K, SPARTA_K), zeros(c)
            e = _bytes(x)
            conv = 2 * SPARTA_K ** 2 * x.numel()
            # eager forward: conv (1R 1W), sigmoid (1R 1W), relu (1R 1W), 2 * gate (1R 1W), product (2R 1W)
            add("sparta", "fwd", x, lambda x=x, w=w, b=b: emu.sparta(x, w, b), (x, w, b), (x,), conv,
                "eager reference (conv, sigmoid, relu, scale, product)", 11 * e)
            # its autograd: the product's two grads (2R 1W each), scale (1R 1W), sigmoid' (2R 1W),
            # relu' (2R 1W), conv input grad (1R 1W), weight grad (2R), the sum of the two dx (2R 1W)
            add("sparta", "bwd", x, lambda x=x, gy=gy, w=w, b=b: emu._sparta_backward(gy, x, w, b), (gy, x, w, b),
                (x, w, b), 2 * conv, "autograd of the eager reference", 21 * e)
        for bsz, c, hw in NLM_GAUSSIAN_SHAPES:
            th, ph = zeros(bsz, c // 2, hw, hw), zeros(bsz, c // 2, hw, hw)
            g, y, gy = zeros(bsz, c, hw, hw), zeros(bsz, c, hw, hw), zeros(bsz, c, hw, hw)
            lse = zeros(bsz, hw * hw, dtype=torch.float32)
            n2 = bsz * (hw * hw) ** 2
            fwd_reads, fwd_writes = (th, ph, g), (y, lse)
            bwd_reads, bwd_writes = (gy, th, ph, g, y, lse), (th, ph, g)
            # forward: S = theta^T phi, Y = P g; backward: S again, dP = dy g^T, dg, dtheta, dphi;
            # fp32 also with its products as tf32 on tensor cores
            for math in (None, "tf32") if dtype == torch.float32 else (None,):
                add("nlm_gaussian", "fwd", g, lambda th=th, ph=ph, g=g: emu.nlm_gaussian(th, ph, g, 1.0), fwd_reads,
                    fwd_writes, 2 * n2 * (c // 2 + c), "fused attention (SDPA) at its minimal traffic",
                    _bytes(*fwd_reads, *fwd_writes), repeats_alike=True, math=math)
                add("nlm_gaussian", "bwd", g,
                    lambda th=th, ph=ph, g=g, y=y, gy=gy, lse=lse: emu._nlm_gaussian_backward(gy, th, ph, g, y, lse,
                                                                                             1.0),
                    bwd_reads, bwd_writes, 2 * n2 * (3 * (c // 2) + 2 * c),
                    "fused attention backward (FlashAttention-2) at its minimal traffic",
                    _bytes(*bwd_reads, *bwd_writes), repeats_alike=True, math=math)
        for shape in MEDIAN_SHAPES:
            x, gy = zeros(shape[0], shape[1], shape[2], shape[2]), zeros(shape[0], shape[1], shape[2], shape[2])
            arg = zeros(*x.shape, dtype=torch.uint8)
            e, n = _bytes(x), x.numel()
            # eager reference: pad (1R 1W), the 9 windows made contiguous (1R 9W), sort of values
            # and int64 indices (9R 9W + 72 bytes per pixel), gather (1R + indices, 1W)
            add("median3x3", "fwd", x, lambda x=x: emu.median3x3(x), (x,), (x, arg), 0,
                "eager reference (pad, windows, sort, gather)", 32 * e + 80 * n)
            # autograd: gather's scatter into the windows (9W, 1R + indices), fold (9R 1W), pad's (1R 1W)
            add("median3x3", "bwd", x, lambda gy=gy, arg=arg: emu._median3x3_backward(gy, arg), (gy, arg), (x,), 0,
                "autograd of the eager reference", 23 * e + 8 * n)
        for bsz, c, hw in CIFS_SHAPES:
            feat, gy, rel = zeros(bsz, c, hw, hw), zeros(bsz, c, hw, hw), zeros(bsz, c)
            e = _bytes(feat)
            # eager: the mask (softmax over C: small) times feat (1R 1W)
            add("cifs_reweight", "fwd", feat, lambda f=feat, r=rel: emu.cifs_reweight(f, r, 1.0, 1.0), (feat, rel),
                (feat,), 0, "eager reference (softmax, broadcast product)", 2 * e + 2 * _bytes(rel))
            # autograd: grad_feat = grad_out * mask (1R 1W), grad_out * feat (2R 1W), its sum over H W (1R)
            add("cifs_reweight", "bwd", feat,
                lambda f=feat, gy=gy, r=rel: emu._cifs_reweight_backward(gy, f, r, 1.0, 1.0), (gy, feat, rel),
                (feat, rel), 0, "autograd of the eager reference", 6 * e + 2 * _bytes(rel))
        rows = PGD_ROWS
        eps, alpha = torch.tensor(8 / 255), torch.tensor(2 / 255)
        x, x_prev, x0, grad = (torch.full((rows, *PGD_IMAGE), 0.5, dtype=dtype) for _ in range(4))
        e = _bytes(x)
        step_baseline = {
            # torchattacks: x + alpha * sign(g) (sign 1R 1W, scale 1R 1W, add 2R 1W), delta = clamp(x - x0)
            # (2R 1W, 1R 1W), clamp(x0 + delta, 0, 1) (2R 1W, 1R 1W), copy into x (1R 1W)
            "linf": 17 * e,
            # torchattacks L2: the gradient's row norms (1R), g / norm (1R 1W), scale (1R 1W), add (2R 1W),
            # delta (2R 1W), its norms (1R), rescale (1R 1W), x0 + delta (2R 1W), clamp (1R 1W), copy (1R 1W)
            "l2": 21 * e,
        }
        for norm in ("linf", "l2"):
            add("pgd_step_", norm, x,
                lambda x=x, x0=x0, grad=grad, norm=norm: emu.pgd_step_(x, x0, grad, eps, alpha, None, None, norm, 0.0,
                                                                       1.0, False),
                (x, x0, grad), (x,), 0, f"torchattacks' {norm} step", step_baseline[norm])
            add("apgd_step_", norm, x,
                lambda x=x, xp=x_prev, x0=x0, grad=grad, norm=norm: emu.apgd_step_(x, xp, x0, grad, alpha.expand(rows),
                                                                                   eps, 0.75, norm, 0.0, 1.0),
                (x, x_prev, x0, grad), (x, x_prev))
            add("pgd_random_init_", norm, x,
                lambda x=x, x0=x0, norm=norm: emu.pgd_random_init_(x, x0, eps, norm, 0.0, 1.0, 0, 0), (x0,), (x,))
        # About half the rows improve, at random (as in an attack's early steps; a regular
        # pattern would alias with the blocks the model samples): the scalars move, and the
        # improving rows of x are copied into the best points (read once, written once).
        loss, best_loss = torch.randn(rows, generator=torch.Generator().manual_seed(0)), torch.zeros(rows)
        improving = loss > 0
        is_adv, success = torch.zeros(rows, dtype=torch.bool), torch.zeros(rows, dtype=torch.bool)
        add("pgd_update_best_", "fwd", x,
            lambda x=x, best=x_prev, loss=loss, bl=best_loss, adv=is_adv, ok=success:
                emu.pgd_update_best_(best, bl.zero_(), ok, x, loss, adv, "loss"),
            (loss, best_loss, is_adv, success, x[improving]), (best_loss, success, x_prev[improving]),
            every_block=True)
    for rows_, classes in MARGIN_SHAPES:
        logits, grad = torch.zeros(rows_, classes), torch.zeros(rows_, classes)
        labels, grad_loss = torch.zeros(rows_, dtype=torch.long), torch.zeros(rows_)
        for kind in ("cw", "dlr"):
            add("margin_loss", kind, logits, lambda lg=logits, lb=labels, k=kind: emu.margin_loss(lg, lb, None, k, 0.0),
                (logits, labels), (grad_loss,))
            add("margin_loss", f"{kind} bwd", logits,
                lambda lg=logits, lb=labels, gl=grad_loss, k=kind: emu._margin_loss_backward(gl, lg, lb, None, k, 0.0),
                (grad_loss, logits, labels), (grad,))
    return cases
