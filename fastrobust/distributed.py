"""torch.distributed helpers of the trainer (DDP) and of the evaluation (fastrobust.eval.shards).

Launch with torchrun: `torchrun --nproc_per_node N -m fastrobust.train ...` (or `-m
fastrobust.eval ...`). The environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
decides the process group; the backend is NCCL on CUDA devices and gloo on the CPU. Without those variables (or with
WORLD_SIZE=1) everything is single-process and no group is created.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto": CUDA when available (cuda:LOCAL_RANK), else the CPU; "cuda" under torchrun
    means cuda:LOCAL_RANK; other names are taken as they are."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def setup(device: str = "auto") -> DistInfo:
    """This process's rank, world size and device; initialises the process group from the
    torchrun environment when WORLD_SIZE > 1 and none exists yet."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return DistInfo(rank, world_size, local_rank, resolve_device(device, local_rank), False)
    if world_size <= 1:
        return DistInfo(0, 1, 0, resolve_device(device), False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    # torch._dynamo, imported lazily (DistributedDataParallel does), keeps references to the
    # default group when the group already exists: destroy_process_group could not free it,
    # and its still-running gloo threads abort the process at exit now and then
    import torch._dynamo  # noqa: F401
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, dev, True)


def cleanup(info: DistInfo, synchronize: bool = True) -> None:
    """Destroys the process group if setup created it.

    With synchronize, every rank first waits at a barrier, so no rank tears its connections
    down while a peer is still inside a collective. Without it (after an error, when a peer may
    never arrive) nothing is torn down: the process exits and the launcher stops the others.
    The caller must have dropped its DistributedDataParallel wrapper (which holds the group) so
    the group's threads are joined here, not during interpreter shutdown.
    """
    if not (info.created_group and dist.is_initialized()):
        return
    if synchronize:
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks, in place (a no-op single-process)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any, info: DistInfo) -> List[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not info.enabled:
        return [obj]
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank src's obj on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


_REBUILT = {e.__name__: e for e in (ValueError, TypeError, RuntimeError)}


def run_shared(jobs: Sequence[Hashable], run: Callable[[Any], Any], info: DistInfo) -> Dict[Any, Any]:
    """{job: run(job)} for every job, in the order of `jobs`, on every rank; each job runs on
    one rank only (job i on rank i % world_size). For work made of independent jobs that seed
    themselves, whose results are then those of a single process. The results travel pickled:
    return CPU tensors. A job that raises on any rank raises on every rank (the first failing
    job's exception, by job order), so no rank waits for a peer that failed."""
    results: Dict[Any, Any] = {}
    failure: Optional[Tuple[int, BaseException]] = None
    for i, job in enumerate(jobs):
        if i % info.world_size != info.rank:
            continue
        try:
            results[job] = run(job)
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            if not info.enabled:
                raise
            failure = (i, exc)
            break
    if not info.enabled:
        return results
    note = None if failure is None else (failure[0], type(failure[1]).__name__, str(failure[1]))
    shares = all_gather_object((results, note), info)
    notes = sorted((n, rank) for rank, (_, n) in enumerate(shares) if n is not None)
    if notes:
        (_, kind, message), rank = notes[0]
        if rank == info.rank:
            raise failure[1]
        if kind in _REBUILT:  # the CLI turns these into one-line errors
            raise _REBUILT[kind](message)
        raise RuntimeError(f"rank {rank}: {kind}: {message}")
    merged = {}
    for share, _ in shares:
        merged.update(share)
    return {job: merged[job] for job in jobs}
