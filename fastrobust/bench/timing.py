"""The benchmark harness's timer: implementations timed in interleaved rounds, and the
device's copy bandwidth that memory-bound kernels are measured against."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from torch.utils.benchmark import Timer

WARMUP_CALLS = 3
COPY_BANDWIDTH_BYTES = 512 * 2**20  # large enough to stream past any L2

Step = Callable[[], Dict[str, torch.Tensor]]


def error_text(exc: BaseException, limit: int = 2000) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + " ...[truncated]"


def time_steps_interleaved(steps: Dict[str, Step], min_run_time: float, rounds: int, label: str = "",
                           sub_label: str = "") -> dict:
    """Times the steps in `rounds` interleaved rounds (min_run_time / rounds each) and takes
    the median over all blocks: a burst of load from a neighbour on a shared machine then
    slows every implementation a little instead of one of them a lot. Returns
    {name: {"median_s", "iqr_s", "blocks"}} or {name: {"error"}} for a step that raised."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    errors: Dict[str, str] = {}

    def measure(name: str, step: Step, warmup: bool) -> None:
        try:
            for _ in range(WARMUP_CALLS if warmup else 0):
                step()
            timer = Timer(stmt="step()", globals={"step": step}, label=label, sub_label=sub_label,
                          description=name, num_threads=torch.get_num_threads())
            times[name].extend(timer.blocked_autorange(min_run_time=min_run_time / rounds).times)
        except Exception as exc:  # out of memory, say: this implementation stops here
            errors[name] = error_text(exc)

    for r in range(rounds):
        for name, step in steps.items():
            if name not in errors:
                measure(name, step, warmup=r == 0)
    results = {name: {"error": err} for name, err in errors.items()}
    for name, ts in times.items():
        if ts and name not in errors:
            q1, median, q3 = torch.tensor(ts, dtype=torch.float64).quantile(
                torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
            results[name] = {"median_s": median, "iqr_s": q3 - q1, "blocks": len(ts)}
    return results


def measure_copy_bandwidth(device: str, nbytes: int = COPY_BANDWIDTH_BYTES) -> Optional[float]:
    """GB/s of a large device-to-device copy (bytes read + written): the practical peak the
    fused kernels, all memory-bound, are measured against."""
    if torch.device(device).type != "cuda":
        return None
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    m = Timer(stmt="dst.copy_(src)", globals={"src": src, "dst": dst}).blocked_autorange(min_run_time=0.2)
    return 2 * nbytes / m.median / 1e9
