"""The optimizers (SGD with momentum and weight decay, as the adversarial-training papers;
Adam, as HGD's denoiser training) and the learning-rate schedules, stepped once per iteration.

- piecewise: lr until the first milestone, then x gamma at each milestone (epochs). Madry et
  al. / Rice et al. PGD-AT on CIFAR: lr 0.1, x0.1 at 50 % and 75 % of the epochs (100 and 150
  of 200); FAT: 60, 90 (and 110 x0.005 in its code).
- onecycle: linear from 0 to lr over the first `peak` fraction of all iterations, then linear
  back to 0 at the last one: Wong et al.'s cyclic schedule (torch CyclicLR with base_lr 0,
  max_lr 0.2, step_size_up = step_size_down = half the iterations, 15 epochs on CIFAR-10).
- constant: lr throughout.

The schedules are LambdaLR factors computed from the global step alone, so a resumed run
continues them exactly (their state is plain numbers).
"""
from __future__ import annotations

import bisect
from typing import Iterable, Optional, Sequence

import torch


def build_optimizer(params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.9,
                    weight_decay: float = 5e-4, nesterov: bool = False, name: str = "sgd") -> torch.optim.Optimizer:
    """"sgd": SGD with momentum and (coupled, L2) weight decay on every parameter, as the papers;
    "adam": Adam with betas (momentum, 0.999) and coupled L2 weight decay (torch.optim.Adam's),
    as the HGD code."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=bool(nesterov) and momentum > 0)
    if name == "adam":
        if nesterov:
            raise ValueError("nesterov is an option of the sgd optimizer, not of adam")
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adam")


class Piecewise:
    """lr factor gamma ** (number of milestones <= current epoch), the epoch being
    step // steps_per_epoch (a milestone m takes effect at the first step of epoch ceil(m))."""

    def __init__(self, milestones: Sequence[float], gamma: float, steps_per_epoch: int):
        self.milestones = [float(m) for m in milestones]
        self.gamma = float(gamma)
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        return self.gamma ** bisect.bisect_right(self.milestones, epoch)


class OneCycle:
    """Triangular: 0 at step 0, 1 at `peak` * total_steps, 0 at total_steps."""

    def __init__(self, total_steps: int, peak: float = 0.5):
        self.total_steps = int(total_steps)
        self.peak = float(peak)

    def __call__(self, step: int) -> float:
        up = max(1.0, self.peak * self.total_steps)
        if step <= up:
            return step / up
        down = max(1.0, self.total_steps - up)
        return max(0.0, (self.total_steps - step) / down)


class Constant:
    def __call__(self, step: int) -> float:
        return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, *, epochs: int, steps_per_epoch: int,
                    milestones: Optional[Sequence[float]] = None, gamma: float = 0.1,
                    peak: float = 0.5) -> torch.optim.lr_scheduler.LambdaLR:
    """The named schedule as a LambdaLR to be stepped after every optimizer step."""
    if name == "piecewise":
        if milestones is None:
            milestones = (0.5 * epochs, 0.75 * epochs)
        factor = Piecewise(milestones, gamma, steps_per_epoch)
    elif name == "onecycle":
        factor = OneCycle(epochs * steps_per_epoch, peak)
    elif name == "constant":
        factor = Constant()
    else:
        raise ValueError(f"unknown lr schedule {name!r}; choose piecewise, onecycle or constant")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
