"""A GPU cost model on the CUDA emulator: what each kernel launch asks of the memory system.

The emulator counts, per warp-wide access (csrc/emu/cost_model.h): global loads and stores in
32-byte sectors against the bytes the lanes asked for, the distinct sectors a launch touches
(DRAM bytes with a perfect L2), shared-memory wavefronts against the conflict-free minimum,
tensor-core operations and SIMT multiply-adds. Device code's global accesses are counted where
they go through FR_GLOBAL(T) pointers, its multiply-adds where it declares them with
FR_COUNT_FMA (the products of NLM and Sparta; other SIMT arithmetic is not counted). A launch
runs a sample of its blocks (`model_blocks`) and the counts are scaled to the whole grid.
Everything here is a model, not a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List

from .kernel_resources import kernel_name, record_launches
from .roofline import HBM_BYTES_PER_S, PEAK_FLOPS, roofline_us  # noqa: F401  (the model's roofline)

SECTOR_BYTES = 32
MMA_FLOPS_PER_DEPTH = 2 * 16 * 16  # an m16n16kK tensor-core operation does K times this


@dataclass
class LaunchCost:
    name: str  # kernel_name(): the kernel without namespace and parameters
    grid: tuple
    block: tuple
    dynamic_smem: int
    counters: Dict[str, int] = field(default_factory=dict)

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def scale(self) -> float:
        """Grid blocks per block that ran (the counts cover the blocks that ran)."""
        ran = self.counters.get("blocks_run", 0)
        return self.blocks / ran if ran else 0.0

    def _ratio(self, num: str, den: str, empty: float = 1.0) -> float:
        d = self.counters.get(den, 0)
        return self.counters.get(num, 0) / d if d else empty

    @property
    def load_sector_efficiency(self) -> float:
        """Useful bytes of the global loads over the bytes of the sectors they touch."""
        c = self.counters
        sectors = c.get("global_load_sectors", 0)
        return c.get("global_load_bytes", 0) / (SECTOR_BYTES * sectors) if sectors else 1.0

    @property
    def store_sector_efficiency(self) -> float:
        c = self.counters
        sectors = c.get("global_store_sectors", 0)
        return c.get("global_store_bytes", 0) / (SECTOR_BYTES * sectors) if sectors else 1.0

    @property
    def sector_efficiency(self) -> float:
        c = self.counters
        sectors = c.get("global_load_sectors", 0) + c.get("global_store_sectors", 0)
        useful = c.get("global_load_bytes", 0) + c.get("global_store_bytes", 0)
        return useful / (SECTOR_BYTES * sectors) if sectors else 1.0

    @property
    def bank_conflict_factor(self) -> float:
        """Shared-memory wavefronts over the conflict-free minimum (1: no conflicts)."""
        return self._ratio("shared_wavefronts", "shared_ideal_wavefronts")

    @property
    def mma_flops(self) -> float:
        """Tensor-core FLOPs, scaled to the whole grid."""
        return MMA_FLOPS_PER_DEPTH * self.counters.get("mma_depth", 0) * self.scale

    @property
    def simt_flops(self) -> float:
        """SIMT FLOPs (2 per declared multiply-add), scaled to the whole grid."""
        return 2 * self.counters.get("fma_ops", 0) * self.scale

    @property
    def flops(self) -> float:
        return self.mma_flops + self.simt_flops

    @property
    def dram_bytes(self) -> float:
        """Distinct sectors read plus distinct sectors written, scaled to the whole grid (a
        perfect-L2 lower bound on DRAM traffic)."""
        c = self.counters
        return (c.get("dram_read_bytes", 0) + c.get("dram_write_bytes", 0)) * self.scale

    def summary(self) -> dict:
        return {
            "kernel": self.name, "grid": self.grid, "block": self.block, "dynamic_smem": self.dynamic_smem,
            "blocks_run": self.counters.get("blocks_run", 0), "dram_bytes": self.dram_bytes,
            "sector_efficiency": self.sector_efficiency, "load_sector_efficiency": self.load_sector_efficiency,
            "store_sector_efficiency": self.store_sector_efficiency,
            "bank_conflict_factor": self.bank_conflict_factor,
            "mma_flops": self.mma_flops, "simt_flops": self.simt_flops,
        }


def model(fn: Callable[[], object], model_blocks: int = 64, reuse_repeats: bool = False) -> List[LaunchCost]:
    """The cost of every emulated kernel launch fn makes (emulated ops), counted over at most
    model_blocks blocks of each launch. The ops' outputs are incomplete when a launch has more
    blocks than that: use this for counting, never for values. reuse_repeats: a launch that
    repeats an earlier one of fn's (kernel, grid, block, shared memory alike) is not run again
    and costs what that one did (its counters carry "reused": 1); right where repeats differ only
    in the data they cover, such as NLM's batch chunks."""
    if model_blocks < 1:
        raise ValueError(f"model_blocks must be >= 1, got {model_blocks}")
    return [LaunchCost(kernel_name(symbol), tuple(grid), tuple(block), int(smem), dict(counters))
            for symbol, grid, block, smem, counters, _ in record_launches(fn, model_blocks, reuse_repeats)]


# model_blocks that runs every block of any launch
EVERY_BLOCK = 2**30


def case_records(case, model_blocks: int) -> List[dict]:
    """The model's records of one op call (fastrobust.kernel_cases.OpCase): one per kernel
    launch, then one for the op ("kernel": "(op)"), with the fields of the model JSON."""
    from .kernel_resources import H100, Launch, kernel_usage, occupancy

    usage_of = kernel_usage()
    records = []
    tf32 = case.math == "tf32"

    def bound(nbytes: float, mma_flops: float, simt_flops: float, flops: float, least_flops: float = 0) -> float:
        """The roofline of flops (mma_flops + simt_flops), at least least_flops, at the dtype's
        peak; tf32 cases: the tensor-core FLOPs (at least least_flops) at the tf32 peak, the SIMT
        FLOPs at fp32's."""
        if tf32:
            return roofline_us(nbytes, max(mma_flops, least_flops), "tf32", simt_flops)
        return roofline_us(nbytes, max(flops, least_flops), case.dtype)

    simt_total = 0.0
    for launch in model(case.fn, EVERY_BLOCK if case.every_block else model_blocks, case.repeats_alike):
        flops = launch.flops
        simt_total += launch.simt_flops
        usage = usage_of.get(launch.name)
        waves = None
        if usage is not None:
            shape = Launch(case.label, launch.name, launch.grid, launch.block, launch.dynamic_smem)
            waves = occupancy(shape, usage, H100)["waves"]
        records.append({
            "op": case.op, "kernel": launch.name, "case": case.label, "dtype": case.dtype,
            "bytes": launch.dram_bytes, "min_bytes": None, "flops": flops, "min_flops": None,
            "sector_efficiency": launch.sector_efficiency, "bank_conflict_factor": launch.bank_conflict_factor,
            "waves": waves, "grid": launch.grid, "block": launch.block, "blocks_run": launch.counters["blocks_run"],
            "reused": bool(launch.counters.get("reused", 0)),
            "modeled_us": bound(launch.dram_bytes, launch.mma_flops, launch.simt_flops, flops),
            "baseline_modeled_us": None,
        })
        if case.math:
            records[-1]["math"] = case.math
    total_bytes = sum(r["bytes"] for r in records)
    total_flops = sum(r["flops"] for r in records)
    records.append({
        "op": case.op, "kernel": "(op)", "case": case.label, "dtype": case.dtype, "bytes": total_bytes,
        "min_bytes": case.min_bytes, "flops": total_flops, "min_flops": case.min_flops,
        "sector_efficiency": None, "bank_conflict_factor": None, "waves": None,
        # Kernels declare only their products (FR_COUNT_FMA): the op is taken to do at least
        # its minimal FLOPs (on the tensor cores, for tf32).
        "modeled_us": bound(total_bytes, total_flops - simt_total, simt_total, total_flops, case.min_flops),
        "baseline": case.baseline,
        "baseline_modeled_us": (bound(case.baseline_bytes, case.min_flops, 0, case.min_flops)
                                if case.baseline_bytes is not None else None),
    })
    if case.math:
        records[-1]["math"] = case.math
    return records


def suite_model(suite: str, model_blocks: int = 16, cases=None) -> dict:
    """The model JSON of a benchmark suite (fastrobust.kernel_cases.SUITE_OPS)."""
    from .kernel_cases import SUITE_OPS, launch_cases

    if suite not in SUITE_OPS:
        raise ValueError(f"suite must be one of {sorted(SUITE_OPS)}, got {suite!r}")
    cases = [c for c in (launch_cases() if cases is None else cases) if c.op in SUITE_OPS[suite]]
    records = [r for case in cases for r in case_records(case, model_blocks)]
    return {"suite": suite, "gpu": "H100 SXM", "model": True, "blocks_per_launch": model_blocks,
            "hbm_bytes_per_s": HBM_BYTES_PER_S, "peak_flops": PEAK_FLOPS, "records": records}


def format_model(result: dict) -> str:
    lines = [f"{result['suite']}: modelled on an {result['gpu']} (a model, not a measurement; DRAM bytes as "
             "distinct 32-byte sectors, a perfect L2)",
             f"  {'bytes/min':>9} {'model us':>9} {'baseline us':>11}  op  /  {'sector eff':>10} {'bank x':>6} "
             f"{'waves':>6}  kernel"]
    for r in result["records"]:
        if r["kernel"] == "(op)":
            ratio = f"{r['bytes'] / r['min_bytes']:.2f}" if r["min_bytes"] else "-"
            base = f"{r['baseline_modeled_us']:.2f}" if r["baseline_modeled_us"] is not None else "-"
            lines.append(f"  {ratio:>9} {r['modeled_us']:>9.2f} {base:>11}  {r['case']}")
    lines.append("  kernels:")
    for r in result["records"]:
        if r["kernel"] != "(op)":
            waves = f"{r['waves']:.2f}" if r["waves"] is not None else "-"
            lines.append(f"  {'':>9} {r['modeled_us']:>9.2f} {'':>11}  {r['sector_efficiency']:>10.0%} "
                         f"{r['bank_conflict_factor']:>6.2f} {waves:>6}  {r['kernel']}  <- {r['case']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    import json
    import sys

    from .kernel_cases import SUITE_OPS

    p = argparse.ArgumentParser(prog="python -m fastrobust.cost_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=sorted(SUITE_OPS), help="the benchmark suite whose ops to model")
    p.add_argument("--blocks", type=int, default=16, help="blocks run per launch (default: 16)")
    p.add_argument("--json", metavar="PATH", help="also write the model JSON here (default: none)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.blocks < 1:
        p.error(f"--blocks must be >= 1, got {args.blocks}")
    from . import _extension

    if not _extension.HAS_EMU:
        print("fastrobust.cost_model: needs the extension built with the CUDA emulator (FR_EMULATE_CUDA=1)",
              file=sys.stderr)
        return 2
    result = suite_model(args.suite, args.blocks)
    print(format_model(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
