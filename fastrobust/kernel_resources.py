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
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional


EMULATED_PREFIX = "_ZN10fastrobust3emu"  # namespace fastrobust::emu (csrc/common/cuda_utils.cuh)


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


def demangle(symbol: str) -> str:
    """The C++ name of a mangled symbol (libstdc++'s __cxa_demangle, which torch's own library
    needs anyway); the symbol itself if it is not a C++ name."""
    import ctypes

    status = ctypes.c_int(0)
    fn = _cxa_demangle()
    if fn is None:
        return symbol
    raw = fn(symbol.encode(), None, None, ctypes.byref(status))
    if status.value != 0 or not raw:
        return symbol
    try:
        return ctypes.cast(raw, ctypes.c_char_p).value.decode()
    finally:
        ctypes.CDLL(None).free(ctypes.c_void_p(raw))


_DEMANGLER = []


def _cxa_demangle():
    import ctypes
    import ctypes.util

    if not _DEMANGLER:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("stdc++") or "libstdc++.so.6")
            fn = lib.__cxa_demangle
            fn.restype = ctypes.c_void_p
            fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
            _DEMANGLER.append(fn)
        except (OSError, AttributeError):
            _DEMANGLER.append(None)
    return _DEMANGLER[0]


def kernel_name(symbol: str) -> str:
    """A kernel's name without its namespace (cuda or emu), return type and parameters, e.g.
    "sparta::sparta_forward_kernel<float, 3>": the same for the nvcc-compiled kernel and its
    emulated twin (whose global pointer parameters have another type), so it joins the two."""
    return _shorten(demangle(symbol))


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
    name: str  # kernel_name(): the key into kernel_usage()
    grid: tuple
    block: tuple
    dynamic_smem: int
    smem_opt_in: int = -1  # the kernel's cudaFuncAttributeMaxDynamicSharedMemorySize (-1: none set)

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


def refusals(launch: Launch, usage: Optional[dict], limits: GpuLimits = H100, opted_in: bool = False) -> List[str]:
    """Why the GPU would refuse this launch (empty: it would run). opted_in: the kernel sets
    cudaFuncAttributeMaxDynamicSharedMemorySize (as launch.smem_opt_in >= 0 records: then the
    launch's dynamic shared memory may not exceed that value)."""
    problems = []
    if not 1 <= launch.threads <= limits.max_threads_per_block:
        problems.append(f"{launch.threads} threads per block (1..{limits.max_threads_per_block})")
    gx, gy, gz = launch.grid
    if not (1 <= gx <= limits.max_grid_x and 1 <= gy <= limits.max_grid_yz and 1 <= gz <= limits.max_grid_yz):
        problems.append(f"grid {launch.grid} outside ({limits.max_grid_x}, {limits.max_grid_yz}, {limits.max_grid_yz})")
    static = usage.get("static_smem", 0) if usage else 0
    opted_in = opted_in or launch.smem_opt_in >= 0
    if launch.smem_opt_in >= 0 and launch.dynamic_smem > launch.smem_opt_in:
        problems.append(f"{launch.dynamic_smem} bytes of dynamic shared memory (> the {launch.smem_opt_in} of "
                        "its cudaFuncAttributeMaxDynamicSharedMemorySize)")
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


def record_launches(fn: Callable[[], object], model_blocks: int = 0, reuse_repeats: bool = False) -> List[tuple]:
    """The emulated kernel launches fn makes, as (symbol, grid, block, dynamic smem, counters,
    the kernel's dynamic shared memory opt-in or -1).
    model_blocks = 0: a dry run, the kernels not run (their outputs are left unwritten);
    model_blocks > 0: each launch runs at most that many of its blocks, spread over its grid,
    under the cost model's counters (fastrobust.cost_model); with reuse_repeats, a launch that
    repeats an earlier one (kernel, grid, block, shared memory) is not run and takes that one's
    counters, with "reused" = 1 (csrc/emu/launch_log.h)."""
    from . import _C  # noqa: the emulated build

    _C._emu_start_launch_log(model_blocks > 0, model_blocks, reuse_repeats)
    try:
        fn()
    finally:
        records = _C._emu_stop_launch_log()
    return records


def benchmark_launches() -> List[Launch]:
    """Every kernel launch of the ops at the benchmark shapes (emulated dry runs)."""
    from .kernel_cases import launch_cases

    launches = []
    for case in launch_cases():
        for symbol, grid, block, smem, _, opt_in in record_launches(case.fn):
            launches.append(Launch(case.label, kernel_name(symbol), tuple(grid), tuple(block), int(smem), int(opt_in)))
    return launches


def kernel_usage() -> Dict[str, dict]:
    """{kernel_name: ptxas usage} of the compiled kernels (empty without CUDA sources)."""
    return {kernel_name(s): dict(u, symbol=s) for s, u in (build_resources() or {}).items() if u.get("kernel")}


def report(limits: GpuLimits = H100) -> dict:
    """{"kernels": [...], "launches": [...]}: every compiled kernel's resources, and every
    benchmark-shape launch with its occupancy on `limits` and what would refuse it."""
    usage_of = kernel_usage()
    kernels = [dict(name=name, **usage_of[name]) for name in sorted(usage_of)]
    launches = []
    for launch in benchmark_launches():
        usage = usage_of.get(launch.name)
        row = dict(op=launch.op, name=launch.name, grid=launch.grid,
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
