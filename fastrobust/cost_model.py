"""A GPU cost model on the CUDA emulator: what each kernel launch asks of the memory system.

The emulator counts, per warp-wide access (csrc/emu/cost_model.h): global loads and stores in
32-byte sectors against the bytes the lanes asked for, the distinct sectors a launch touches
(DRAM bytes with a perfect L2), shared-memory wavefronts against the conflict-free minimum, and
tensor-core operations. Device code's global accesses are counted where they go through
FR_GLOBAL(T) pointers. A launch runs a sample of its blocks (`model_blocks`) and the counts
are scaled to the whole grid. Everything here is a model, not a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List

from .kernel_resources import cuda_symbol, record_launches

SECTOR_BYTES = 32


@dataclass
class LaunchCost:
    symbol: str  # the nvcc-compiled kernel's mangled name
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
    def dram_bytes(self) -> float:
        """Distinct sectors touched, scaled to the whole grid (a perfect-L2 lower bound)."""
        return self.counters.get("dram_bytes", 0) * self.scale

    def summary(self) -> dict:
        return {
            "symbol": self.symbol, "grid": self.grid, "block": self.block, "dynamic_smem": self.dynamic_smem,
            "blocks_run": self.counters.get("blocks_run", 0), "dram_bytes": self.dram_bytes,
            "sector_efficiency": self.sector_efficiency, "load_sector_efficiency": self.load_sector_efficiency,
            "store_sector_efficiency": self.store_sector_efficiency,
            "bank_conflict_factor": self.bank_conflict_factor,
            "mma_flops": 2 * 16 * 16 * 16 * self.counters.get("mma_ops", 0) * self.scale,
        }


def model(fn: Callable[[], object], model_blocks: int = 64) -> List[LaunchCost]:
    """The cost of every emulated kernel launch fn makes (emulated ops), counted over at most
    model_blocks blocks of each launch. The ops' outputs are incomplete when a launch has more
    blocks than that: use this for counting, never for values."""
    if model_blocks < 1:
        raise ValueError(f"model_blocks must be >= 1, got {model_blocks}")
    return [LaunchCost(cuda_symbol(symbol), tuple(grid), tuple(block), int(smem), dict(counters))
            for symbol, grid, block, smem, counters in record_launches(fn, model_blocks)]
