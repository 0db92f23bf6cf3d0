"""The CUDA kernels' resources and the occupancy of their launches on an H100, without a GPU.

Two halves, joined by the kernel's mangled name:
- what ptxas reports for every kernel when setup.py compiles the CUDA sources (registers,
  spills, stack frame, static shared memory; csrc/tools/nvcc_resource_usage.py keeps it in
  the build info);
- the launch configurations the ops choose at the CUDA benchmark shapes (grid, block, dynamic
  shared memory), recorded by running the emulated ops with kernel execution off (a dry run of
  the host code, csrc/emu/launch_log.h).

`python -m fastrobust.info --kernels` prints the table; tests/test_kernel_resources.py fails on
a spill, on more shared memory than a block may use without the opt-in attribute, and on a
launch an H100 would refuse. Occupancy here is the CUDA occupancy calculator's model (resident
blocks per SM from warps, registers and shared memory), a model, not a measurement.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from ._ptxas import parse_ptxas  # noqa: F401 (part of this module's API)

EMULATED_PREFIX = "_ZN10fastrobust3emu"  # namespace fastrobust::emu (csrc/common/cuda_utils.cuh)
CUDA_PREFIX = "_ZN10fastrobust4cuda"  # namespace fastrobust::cuda: the same kernel under nvcc


@dataclass(frozen=True)
class GpuLimits:
    name: str
    arch: str  # the sm_XX whose ptxas report applies
    sms: int
    max_threads_per_block: int = 1024
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    warp_size: int = 32
    registers_per_sm: int = 65536
    registers_per_block: int = 65536
    max_registers_per_thread: int = 255
    register_alloc_unit: int = 256  # registers are allocated per warp in units of 256
    shared_per_sm: int = 228 * 1024
    shared_per_block_default: int = 48 * 1024  # static + dynamic without the opt-in attribute
    shared_per_block_optin: int = 227 * 1024
    shared_reserved_per_block: int = 1024  # kept by the system for every resident block
    shared_alloc_unit: int = 128
    max_grid_x: int = 2**31 - 1
    max_grid_yz: int = 65535


H100 = GpuLimits(name="H100 SXM", arch="sm_90", sms=132)


def build_resources() -> Optional[Dict[str, dict]]:
    """The ptxas report of this build ({mangled function: usage}); None when the build compiled
    no CUDA sources (or predates the report)."""
    try:
        from ._build_info import BUILD_INFO
    except ImportError:
        return None
    return BUILD_INFO.get("kernel_resources")


def cuda_symbol(symbol: str) -> str:
    """The nvcc-compiled kernel's mangled name for an emulated kernel's: the two differ only in
    the kernel namespace (emu vs cuda), which has the same place in both manglings."""
    if symbol.startswith(EMULATED_PREFIX):
        return CUDA_PREFIX + symbol[len(EMULATED_PREFIX):]
    return symbol


def short_names(symbols) -> Dict[str, str]:
    """{mangled: readable name}: the demangled name without namespaces and parameters
    (c++filt when it is installed, else the mangled name)."""
    symbols = sorted(set(symbols))
    if not symbols or shutil.which("c++filt") is None:
        return {s: s for s in symbols}
    out = subprocess.run(["c++filt"], input="\n".join(symbols) + "\n", capture_output=True, text=True).stdout
    demangled = out.splitlines()
    if len(demangled) != len(symbols):
        return {s: s for s in symbols}
    return {s: _shorten(d) for s, d in zip(symbols, demangled)}


def _shorten(demangled: str) -> str:
    name = demangled[5:] if demangled.startswith("void ") else demangled
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # the parameter list: the first "(" outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    name = name[:cut]
    for prefix in ("fastrobust::cuda::", "fastrobust::emu::", "fastrobust::", "c10::"):
        name = name.replace(prefix, "")
    return re.sub(r"\((\w+::)*(\w+)\)(\d+)", r"\2(\3)", name)  # (nlm::Grad)0 -> Grad(0)


# ---------------------------------------------------------------------------------------------
# launches and occupancy


@dataclass
class Launch:
    op: str  # the op call (and shape) that made the launch
    symbol: str  # mangled name of the nvcc-compiled kernel
    grid: tuple
    block: tuple
    dynamic_smem: int

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


def refusals(launch: Launch, usage: Optional[dict], limits: GpuLimits = H100, opted_in: bool = False) -> List[str]:
    """Why the GPU would refuse this launch (empty: it would run). opted_in: the kernel sets
    cudaFuncAttributeMaxDynamicSharedMemorySize (none of ours does)."""
    problems = []
    if not 1 <= launch.threads <= limits.max_threads_per_block:
        problems.append(f"{launch.threads} threads per block (1..{limits.max_threads_per_block})")
    gx, gy, gz = launch.grid
    if not (1 <= gx <= limits.max_grid_x and 1 <= gy <= limits.max_grid_yz and 1 <= gz <= limits.max_grid_yz):
        problems.append(f"grid {launch.grid} outside ({limits.max_grid_x}, {limits.max_grid_yz}, {limits.max_grid_yz})")
    static = usage.get("static_smem", 0) if usage else 0
    allowed = limits.shared_per_block_optin if opted_in else limits.shared_per_block_default
    if static + launch.dynamic_smem > allowed:
        problems.append(f"{static} + {launch.dynamic_smem} bytes of shared memory per block (> {allowed}"
                        + ("" if opted_in else " without cudaFuncAttributeMaxDynamicSharedMemorySize") + ")")
    if usage:
        per_block = _warps(launch.threads, limits) * _registers_per_warp(usage["registers"], limits)
        if per_block > limits.registers_per_block:
            problems.append(f"{usage['registers']} registers x {launch.threads} threads = {per_block} "
                            f"registers per block (> {limits.registers_per_block})")
    return problems


def _warps(threads: int, limits: GpuLimits) -> int:
    return -(-threads // limits.warp_size)


def _registers_per_warp(registers: int, limits: GpuLimits) -> int:
    unit = limits.register_alloc_unit
    return -(-max(registers, 1) * limits.warp_size // unit) * unit


def occupancy(launch: Launch, usage: dict, limits: GpuLimits = H100) -> dict:
    """Resident blocks per SM, the fraction of the SM's warps they fill, what limits them and
    the number of waves the grid takes (the CUDA occupancy calculator's model)."""
    warps = _warps(launch.threads, limits)
    max_warps = limits.max_threads_per_sm // limits.warp_size
    by = {
        "blocks": limits.max_blocks_per_sm,
        "warps": max_warps // warps,
        "registers": (limits.registers_per_sm // _registers_per_warp(usage["registers"], limits)) // warps,
    }
    smem = usage.get("static_smem", 0) + launch.dynamic_smem + limits.shared_reserved_per_block
    smem = -(-smem // limits.shared_alloc_unit) * limits.shared_alloc_unit
    by["shared memory"] = limits.shared_per_sm // smem
    blocks = min(by.values())
    limiter = min(by, key=by.get)  # the first of the smallest, in the order above
    per_wave = max(blocks, 1) * limits.sms
    return {
        "blocks_per_sm": blocks,
        "occupancy": blocks * warps / max_warps,
        "limited_by": limiter,
        "waves": launch.blocks / per_wave,
    }


def record_launches(fn: Callable[[], object], model_blocks: int = 0) -> List[tuple]:
    """The emulated kernel launches fn makes, as (symbol, grid, block, dynamic smem, counters).
    model_blocks = 0: a dry run, the kernels not run (their outputs are left unwritten);
    model_blocks > 0: each launch runs at most that many of its blocks, spread over its grid,
    under the cost model's counters (fastrobust.cost_model)."""
    from . import _C  # noqa: the emulated build

    _C._emu_start_launch_log(model_blocks > 0, model_blocks)
    try:
        fn()
    finally:
        records = _C._emu_stop_launch_log()
    return records


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


def launch_cases() -> List[tuple]:
    """(label, fn) per op call at the benchmark shapes; fn calls the emulated op."""
    emu = torch.ops.fastrobust_emu
    cases = []

    def add(label, fn):
        cases.append((label, fn))

    for dtype in LAYER_DTYPES:
        dt = str(dtype).replace("torch.", "")
        for c, hw in SPARTA_STAGES:
            x = torch.zeros(SPARTA_BATCH, c, hw, hw, dtype=dtype)
            w = torch.zeros(c, 1, SPARTA_K, SPARTA_K, dtype=dtype)
            b = torch.zeros(c, dtype=dtype)
            add(f"sparta {dt} {tuple(x.shape)}", lambda x=x, w=w, b=b: emu.sparta(x, w, b))
            add(f"sparta backward {dt} {tuple(x.shape)}", lambda x=x, w=w, b=b: emu._sparta_backward(x, x, w, b))
        for bsz, c, hw in NLM_GAUSSIAN_SHAPES:
            th = torch.zeros(bsz, c // 2, hw, hw, dtype=dtype)
            g = torch.zeros(bsz, c, hw, hw, dtype=dtype)
            lse = torch.zeros(bsz, hw * hw, dtype=torch.float32)
            add(f"nlm_gaussian {dt} {tuple(g.shape)}", lambda th=th, g=g: emu.nlm_gaussian(th, th, g, 1.0))
            add(f"nlm_gaussian backward {dt} {tuple(g.shape)}",
                lambda th=th, g=g, lse=lse: emu._nlm_gaussian_backward(g, th, th, g, g, lse, 1.0))
        for shape in MEDIAN_SHAPES:
            x = torch.zeros(shape[0], shape[1], shape[2], shape[2], dtype=dtype)
            arg = torch.zeros(x.shape, dtype=torch.uint8)
            add(f"median3x3 {dt} {tuple(x.shape)}", lambda x=x: emu.median3x3(x))
            add(f"median3x3 backward {dt} {tuple(x.shape)}", lambda x=x, arg=arg: emu._median3x3_backward(x, arg))
        for bsz, c, hw in CIFS_SHAPES:
            feat = torch.zeros(bsz, c, hw, hw, dtype=dtype)
            rel = torch.zeros(bsz, c, dtype=dtype)
            add(f"cifs_reweight {dt} {tuple(feat.shape)}", lambda f=feat, r=rel: emu.cifs_reweight(f, r, 1.0, 1.0))
            add(f"cifs_reweight backward {dt} {tuple(feat.shape)}",
                lambda f=feat, r=rel: emu._cifs_reweight_backward(f, f, r, 1.0, 1.0))
    rows = PGD_ROWS
    eps, alpha = torch.tensor(8 / 255), torch.tensor(2 / 255)
    for dtype in LAYER_DTYPES:
        dt = str(dtype).replace("torch.", "")
        x = torch.full((rows, *PGD_IMAGE), 0.5, dtype=dtype)
        for norm in ("linf", "l2"):
            add(f"pgd_step_ {norm} {dt} {tuple(x.shape)}",
                lambda x=x, norm=norm: emu.pgd_step_(x.clone(), x, x, eps, alpha, None, None, norm, 0.0, 1.0, False))
            add(f"apgd_step_ {norm} {dt} {tuple(x.shape)}",
                lambda x=x, norm=norm: emu.apgd_step_(x.clone(), x.clone(), x, x, alpha.expand(rows), eps, 0.75, norm,
                                                      0.0, 1.0))
            add(f"pgd_random_init_ {norm} {dt} {tuple(x.shape)}",
                lambda x=x, norm=norm: emu.pgd_random_init_(x.clone(), x, eps, norm, 0.0, 1.0, 0, 0))
        loss = torch.zeros(rows)
        flags = torch.zeros(rows, dtype=torch.bool)
        add(f"pgd_update_best_ {dt} {tuple(x.shape)}",
            lambda x=x, loss=loss, flags=flags: emu.pgd_update_best_(x.clone(), loss.clone(), flags.clone(), x, loss,
                                                                     flags, "loss"))
    for rows_, classes in MARGIN_SHAPES:
        logits = torch.zeros(rows_, classes)
        labels = torch.zeros(rows_, dtype=torch.long)
        for kind in ("cw", "dlr"):
            add(f"margin_loss {kind} {tuple(logits.shape)}",
                lambda lg=logits, lb=labels, k=kind: emu.margin_loss(lg, lb, None, k, 0.0))
            add(f"margin_loss backward {kind} {tuple(logits.shape)}",
                lambda lg=logits, lb=labels, k=kind: emu._margin_loss_backward(lg[:, 0], lg, lb, None, k, 0.0))
    return cases


def benchmark_launches() -> List[Launch]:
    """Every kernel launch of the ops at the benchmark shapes (emulated dry runs)."""
    launches = []
    for label, fn in launch_cases():
        for symbol, grid, block, smem, _ in record_launches(fn):
            launches.append(Launch(label, cuda_symbol(symbol), tuple(grid), tuple(block), int(smem)))
    return launches


def report(limits: GpuLimits = H100) -> dict:
    """{"kernels": [...], "launches": [...]}: every compiled kernel's resources, and every
    benchmark-shape launch with its occupancy on `limits` and what would refuse it."""
    resources = build_resources() or {}
    recorded = benchmark_launches()
    names = short_names(list(resources) + [launch.symbol for launch in recorded])
    kernels = sorted((dict(symbol=s, name=names[s], **u) for s, u in resources.items() if u.get("kernel")),
                     key=lambda k: k["name"])
    launches = []
    for launch in recorded:
        usage = resources.get(launch.symbol)
        row = dict(op=launch.op, symbol=launch.symbol, name=names[launch.symbol], grid=launch.grid,
                   block=launch.block, dynamic_smem=launch.dynamic_smem, compiled=usage is not None,
                   refusals=refusals(launch, usage, limits))
        if usage is not None:
            row.update(occupancy(launch, usage, limits))
        launches.append(row)
    return {"gpu": limits.name, "arch": limits.arch, "kernels": kernels, "launches": launches}


def format_report(rep: dict) -> str:
    lines = []
    if not rep["kernels"]:
        lines.append("no ptxas report in this build (CUDA sources not compiled): launch configurations only")
    else:
        lines.append(f"compiled kernels ({len(rep['kernels'])}; ptxas, {rep['kernels'][0].get('arch', '?')}):")
        lines.append(f"  {'regs':>4} {'spill st/ld':>11} {'stack':>5} {'smem':>6}  kernel")
        for k in rep["kernels"]:
            lines.append(f"  {k['registers']:>4} {k.get('spill_stores', 0):>5}/{k.get('spill_loads', 0):<5} "
                         f"{k.get('stack_frame', 0):>5} {k['static_smem']:>6}  {k['name']}")
    lines.append(f"launches at the CUDA benchmark shapes on an {rep['gpu']} (occupancy: a model):")
    lines.append(f"  {'grid':>18} {'block':>13} {'dyn smem':>8} {'blk/SM':>6} {'occ':>5} {'waves':>6} "
                 f"{'limited by':>13}  kernel  <- op")
    for r in rep["launches"]:
        occ = (f"{r['blocks_per_sm']:>6} {r['occupancy']:>5.0%} {r['waves']:>6.2f} {r['limited_by']:>13}"
               if "occupancy" in r else f"{'-':>6} {'-':>5} {'-':>6} {'-':>13}")
        lines.append(f"  {str(r['grid']):>18} {str(r['block']):>13} {r['dynamic_smem']:>8} {occ}  "
                     f"{r['name']}  <- {r['op']}")
        for problem in r["refusals"]:
            lines.append(f"      REFUSED: {problem}")
    return "\n".join(lines)
