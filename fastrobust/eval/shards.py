"""evaluate(distributed=True): one evaluation shared among the ranks of a torch.distributed
process group, with the numbers a single process reports.

Every rank runs a contiguous block of whole batches, of the clean pass and of each attack's
points. A batch thus holds the points, and its attack gets the seed (seed, attack, batch), that
it has in a single process, so its random starts and floating-point sums are the same on
whichever rank it runs. After each pass the per-point outcomes are summed over the ranks (each
point is attacked on one rank only, so the sums are exact) and every rank goes on with the
whole robust mask. The process group is the caller's: under torchrun,
fastrobust.distributed.setup() (gloo on the CPU, NCCL on CUDA) or
torch.distributed.init_process_group.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import DistInfo, all_gather_object, all_reduce_sum, broadcast_object
from .inference import predict


def process_group(distributed: bool, device: torch.device) -> DistInfo:
    """The ranks evaluate() works with: this process alone unless `distributed`, else the
    caller's initialised default group (evaluate creates none: it could not know when to tear it
    down)."""
    if not distributed:
        return DistInfo(device=device)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True: no torch.distributed process group is initialised; under torchrun "
                           "call fastrobust.distributed.setup() (or torch.distributed.init_process_group) first")
    return DistInfo(dist.get_rank(), dist.get_world_size(), device=device)


def check_same_evaluation(signature: Any, info: DistInfo) -> None:
    """ValueError on every rank when the ranks were given different evaluations (different
    points, attacks or options): their collectives would pair up wrongly or wait forever."""
    seen = all_gather_object(signature, info)
    differing = [rank for rank, s in enumerate(seen) if s != seen[0]]
    if differing:
        raise ValueError(f"distributed=True: rank {differing[0]} evaluates {seen[differing[0]]!r}, rank 0 "
                         f"{seen[0]!r}; every rank must pass the same data, attacks and options")


def batch_block(count: int, batch_size: int, info: DistInfo) -> range:
    """The numbers of this rank's batches among the ceil(count / batch_size) of a pass: a
    contiguous block, the ranks' blocks differing by one batch at most. Whole batches, so each
    batch holds the points it holds in a single process."""
    batches = -(-count // batch_size)
    return range(batches * info.rank // info.world_size, batches * (info.rank + 1) // info.world_size)


def predict_shared(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device,
                   autocast: Optional[torch.dtype], info: DistInfo) -> torch.Tensor:
    """predict() of all the points on every rank, each rank running its block of batches."""
    block = batch_block(x.shape[0], batch_size, info)
    lo, hi = block.start * batch_size, min(block.stop * batch_size, x.shape[0])
    pred = predict(model, x[lo:hi], batch_size, device, autocast)
    if not info.enabled:
        return pred
    whole = torch.zeros(x.shape[0], dtype=pred.dtype, device=device)
    whole[lo:hi] = pred
    return all_reduce_sum(whole, info)


def gather_outcome(success: torch.Tensor, nonfinite: torch.Tensor, forwards: int, backwards: int,
                   info: DistInfo) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
    """An attack's outcome over all ranks, from each rank's share: which points it broke, its
    non-finite count and its forward and backward passes, summed in one collective."""
    if not info.enabled:
        return success, nonfinite, forwards, backwards
    n = success.numel()
    packed = torch.cat([success.long(), nonfinite.reshape(1).long(),
                        torch.tensor([forwards, backwards], dtype=torch.long, device=success.device)])
    all_reduce_sum(packed, info)
    return packed[:n].bool(), packed[n], int(packed[n + 1]), int(packed[n + 2])


def share_adversarial(x_adv: torch.Tensor, replaced: torch.Tensor, mine: List[Tuple[torch.Tensor, torch.Tensor]],
                      info: DistInfo) -> None:
    """keep_adversarial: the adversarial rows the other ranks kept in a pass, written into this
    rank's x_adv. mine: this rank's (points, rows) of the pass, already written."""
    if not info.enabled:
        return
    for rank, kept in enumerate(all_gather_object(mine, info)):
        if rank != info.rank:
            for points, rows in kept:
                x_adv[points] = rows
                replaced[points] = True


def on_rank_zero(fn: Callable[[], Any], info: DistInfo) -> Any:
    """fn() run by rank 0 alone, its result on every rank: the checks and the noise accuracy
    draw one random stream across their batches, which a split among ranks could not repeat."""
    if not info.enabled:
        return fn()
    return broadcast_object(fn() if info.is_main else None, info)
