"""What every training recipe is: a small strategy object that computes the loss of a batch.

The trainer owns the loop (data, optimizer, schedule, checkpoints, metrics); a recipe only
turns (model, x, y) into a BatchOutput. Adversarial examples come from fastrobust.attacks,
which runs the model in eval mode and restores train mode; the recipe then computes its loss
on them in train mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional, Type

import torch
from torch import nn


@dataclass
class StepContext:
    """Where the trainer is, and the randomness a recipe may use.

    generator: on the batch's device; every random tensor a recipe draws comes from it, so
               that runs and resumes are reproducible.
    host_generator: a CPU generator for the integers the host needs (attack seeds, mixup
               draws): reading a number drawn on a GPU would wait for the device every step.
               None draws them from `generator` instead.
    autocast_dtype: None for float32; else the dtype the trainer runs the model under, which
               the recipe passes on to its attacks (autocast=...).
    """

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    generator: torch.Generator
    autocast_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    host_generator: Optional[torch.Generator] = None

    def seed(self, high: int = 2 ** 31 - 1) -> int:
        """A fresh integer in [0, high), e.g. an attack seed, drawn from host_generator (no
        device sync) or else from generator."""
        g = self.host_generator if self.host_generator is not None else self.generator
        return int(torch.randint(high, (1,), generator=g, device=g.device))

    @property
    def progress(self) -> float:
        """Fraction of training done before this step, in [0, 1)."""
        return self.step / max(1, self.epochs * self.steps_per_epoch)


@dataclass
class BatchOutput:
    """loss: the scalar the trainer backpropagates. logits: clean logits of the batch (train
    mode), for the clean accuracy, or None where the recipe computes none. adv_logits: logits
    on the adversarial batch, for the adversarial accuracy. extras: scalars to log."""

    loss: torch.Tensor
    logits: Optional[torch.Tensor]
    adv_logits: Optional[torch.Tensor] = None
    extras: Dict[str, Any] = field(default_factory=dict)


class Recipe:
    """Base class. Subclasses set `name`, take their options as keyword arguments (with the
    paper's defaults, checked with clear errors) and implement batch_loss."""

    name: ClassVar[str] = ""

    def prepare(self, model: nn.Module, num_classes: int) -> nn.Module:
        """Called once before training; may modify or wrap the model (returns the model to train)."""
        return model

    def structure(self, model: nn.Module, num_classes: int) -> nn.Module:
        """The model prepare() returns, without what training needs from elsewhere (HGD's target
        weights): what a checkpoint's state dict is loaded into. Default: prepare()."""
        return self.prepare(model, num_classes)

    def attach_data(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Called once before training with this rank's training tensors, for recipes that build
        something from the whole training set (LADDER's decoder and SVMs). Default: nothing."""

    def epoch_start(self, epoch: int, epochs: int) -> None:
        """Called at the start of every epoch (0-based)."""

    def depends_on_total_epochs(self) -> bool:
        """Whether the recipe's maths uses the run's total epochs (ctx.epochs, ctx.progress,
        epoch_start's `epochs`). A finished run of such a recipe cannot be extended by resuming
        with more epochs: its trained epochs would differ from a straight run of the new length.
        True unless a recipe says otherwise, since a recipe may read them anywhere."""
        return True

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> BatchOutput:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        """Recipe state that a resumed run needs (default: none)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            raise ValueError(f"recipe {self.name!r} has no state, got keys {sorted(state)}")

    def options(self) -> Dict[str, Any]:
        """The options the recipe runs with (written to the run's config and report)."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


RECIPES: Dict[str, Type[Recipe]] = {}


def register_recipe(cls: Type[Recipe]) -> Type[Recipe]:
    """Class decorator adding a recipe to RECIPES under cls.name."""
    if not cls.name or cls.name in RECIPES:
        raise ValueError(f"recipe name {cls.name!r} is empty or already registered")
    RECIPES[cls.name] = cls
    return cls


def create_recipe(name: str, **options) -> Recipe:
    """The recipe `name` with its options; clear errors for unknown names and options."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}")
    try:
        return RECIPES[name](**options)
    except TypeError as exc:
        raise ValueError(f"recipe {name!r}: {exc}") from exc
