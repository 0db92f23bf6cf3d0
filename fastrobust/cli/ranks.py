"""The ranks of a `--distributed` command (fastrobust eval, fastrobust detect) under torchrun,
and the `python -m fastrobust.eval` / `python -m fastrobust.detect` entry points that torchrun
launches."""
from __future__ import annotations

import os
import sys
from typing import Callable

from .common import check_device
from .errors import CLIError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def join_ranks(device: str, command: str):
    """--distributed: this process's DistInfo (rank, world size, device: cuda:LOCAL_RANK for
    cuda / auto) in the process group of torchrun's environment, created here (gloo on the CPU,
    NCCL on CUDA) unless the caller made one; CLIError outside torchrun, before any work."""
    import torch.distributed as dist

    from .. import distributed

    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing and not (dist.is_available() and dist.is_initialized()):
        raise CLIError(f"--distributed: not launched by torchrun ({', '.join(missing)} not set); run e.g. "
                       f"torchrun --nproc_per_node 2 -m fastrobust.{command} CHECKPOINT")
    check_device(device)
    return distributed.setup(device)


def run_on_ranks(args, command: str, work: Callable) -> int:
    """work(args, ranks) on this process alone, or with --distributed on every rank of
    torchrun's group; the group is torn down after it (without the closing barrier when work
    raised: a peer may never arrive)."""
    from .. import distributed

    ranks = join_ranks(args.device, command) if args.distributed else \
        distributed.DistInfo(device=check_device(args.device))
    finished = False
    try:
        work(args, ranks)
        finished = True
    finally:
        distributed.cleanup(ranks, synchronize=finished)
    return 0


def module_main(command: str) -> int:
    """`python -m fastrobust.COMMAND ARGS`: `fastrobust COMMAND ARGS`, with --distributed added
    in torchrun's environment (WORLD_SIZE set), which is what launching under torchrun asks for."""
    from . import main

    argv = [command] + sys.argv[1:]
    if "WORLD_SIZE" in os.environ and "--distributed" not in argv:
        argv.append("--distributed")
    return main(argv)
