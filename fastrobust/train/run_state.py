"""A run's state in its checkpoint, and a run resumed from one.

checkpoint_state(trainer) is what Trainer writes after every epoch: the model, optimizer,
schedule, GradScaler and recipe states, every rank's RNG states, the trainer's bookkeeping
(best epoch, guard accuracy, training time) and the config with its fingerprint. resume(trainer,
path) puts all of it back, after resume_rules has checked that this run's options may continue
that checkpoint, so that a resumed run continues bit for bit (on the CPU).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict

import torch

import fastrobust
from .. import distributed
from ..metrics_log import read_metrics
from .checkpoint import CheckpointError, check_finite_weights, load_checkpoint, load_model_state, rng_state, set_rng_state
from .resume_rules import check_resume

if TYPE_CHECKING:  # the trainer imports this module
    from .trainer import Trainer


def _bookkeeping(trainer: "Trainer") -> Dict[str, Any]:
    return dict(best_metric=trainer.best_metric, best_value=trainer.best_value, best_epoch=trainer.best_epoch,
                guard_prev=trainer.guard_prev, train_time=trainer.train_time)


def _generators(trainer: "Trainer") -> Dict[str, torch.Generator]:
    gens = {"recipe": trainer.generator}
    if trainer.host_generator is not None:
        gens["host"] = trainer.host_generator
    return gens


def checkpoint_state(trainer: "Trainer") -> Dict[str, Any]:
    """The full state (every rank must call it: the RNG states are gathered)."""
    rngs = distributed.all_gather_object(rng_state(_generators(trainer), trainer.dist.device), trainer.dist)
    return dict(
        epoch=trainer.epoch, step=trainer.step, finished=trainer.finished, stopped_early=trainer.stopped_early,
        model=trainer.model.state_dict(), optimizer=trainer.optimizer.state_dict(),
        scheduler=trainer.scheduler.state_dict(),
        scaler=None if trainer.scaler is None else trainer.scaler.state_dict(),
        recipe=trainer.recipe.state_dict(), rng=rngs, trainer=_bookkeeping(trainer),
        config=trainer.config.to_dict(), fingerprint=trainer.config.fingerprint(), world_size=trainer.dist.world_size,
        model_class=type(trainer.model).__name__,
        versions={"torch": str(torch.__version__), "fastrobust": str(getattr(fastrobust, "__version__", "unknown"))})


def resume(trainer: "Trainer", path: str) -> None:
    """Loads checkpoint `path` into a freshly built trainer (CheckpointError where it cannot
    continue this run)."""
    state = load_checkpoint(path)
    done, stopped_early = int(state["epoch"]), state.get("stopped_early")
    check_resume(path, state.get("fingerprint"), trainer.config, done=done, stopped_early=stopped_early,
                 recipe_scales_with_epochs=trainer.recipe.depends_on_total_epochs())
    dist = trainer.dist
    if state.get("world_size", 1) != dist.world_size:
        raise CheckpointError(f"checkpoint {path}: written by {state.get('world_size')} processes, resumed with "
                              f"{dist.world_size} (the data shards and RNG states would differ)")
    check_finite_weights(path, state["model"])
    load_model_state(path, trainer.model, state["model"])
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
        restore_schedule(trainer.scheduler, trainer.optimizer, state["scheduler"])
        if trainer.scaler is not None and state.get("scaler"):
            trainer.scaler.load_state_dict(state["scaler"])
        trainer.recipe.load_state_dict(state.get("recipe") or {})
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: does not match this run's optimizer/schedule/recipe "
                              f"({type(exc).__name__}: {exc})") from None
    set_rng_state(state["rng"][dist.rank], _generators(trainer), dist.device)
    trainer.epoch, trainer.step = done, int(state["step"])
    trainer.stopped_early = stopped_early
    # finished by this run's epochs: a finished run resumed with more continues (check_resume
    # allowed it), an unfinished one resumed with as many epochs as it has done is complete
    trainer.finished = stopped_early is not None or done >= trainer.config.epochs
    t = state.get("trainer") or {}
    trainer.best_value, trainer.best_epoch = t.get("best_value"), t.get("best_epoch")
    trainer.guard_prev, trainer.train_time = t.get("guard_prev"), float(t.get("train_time", 0.0))
    if trainer.config.guard_enabled and trainer.best_value is not None and os.path.exists(trainer.best_path):
        trainer._best_state = {k: v.to(dist.device) for k, v in load_checkpoint(trainer.best_path)["model"].items()}
    if dist.is_main:  # the records of the epochs the checkpoint holds (a fork starts its folder with them)
        source = os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.jsonl")
        trainer.history = [r for r in read_metrics(source) if isinstance(r.get("epoch"), int) and r["epoch"] <= done]
    trainer.resumed_from = path


def restore_schedule(scheduler, optimizer, state: Dict[str, Any]) -> None:
    """The schedule's position from the checkpoint, its shape from this run's config.

    LambdaLR.load_state_dict also restores the attributes of the factor object (Piecewise
    milestones, OneCycle total_steps) as they were saved; a resume that extends the run
    (resume_rules) keeps the new ones, and the learning rate of the next step is
    recomputed from them (the same number when nothing changed)."""
    factor = scheduler.lr_lambdas[0]
    shape = dict(vars(factor))
    scheduler.load_state_dict(state)
    vars(factor).update(shape)
    lrs = [base * factor(scheduler.last_epoch) for base in scheduler.base_lrs]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
