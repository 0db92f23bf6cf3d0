"""Which options a resumed run may change.

Resuming continues a run bit for bit, so an option may differ from the run's only where the
epochs already trained are exactly what a straight run with the new value would have trained:

- free: RESUME_MAY_DIFFER (where files go, what is shown, the device, threads, torch.compile,
  the CIFAR folder; and overwrite): none of them enters the maths of a step.
- epochs: to extend a finished run or to shorten an unfinished one, never below the epochs
  done, and only when nothing already trained depends on the total: not with the onecycle
  schedule (its learning rate rises and falls over all the epochs of a run), not with a recipe
  that scales with the epochs (Recipe.depends_on_total_epochs: fat's default tau milestones),
  not after the overfitting guard stopped the run. The piecewise schedule's default milestones
  are 50 % and 75 % of the epochs, so they move with them: give the run's milestones.
- milestones (piecewise): those the run has not reached may change; the learning rate of every
  epoch trained must stay.
- everything else (model, data, recipe and its options, eps/alpha/steps, batch size, optimizer, lr,
  momentum, weight decay, schedule, amp, seed, subset, max_steps_per_epoch, the checks'
  settings): must match.
"""
from __future__ import annotations

import bisect
from typing import Any, Dict, Optional, Sequence

from .checkpoint import CheckpointError
from .config import RESUME_MAY_DIFFER, TrainConfig

MAY_CHANGE = ("on resume only these options may differ from the run's: epochs (not below the epochs done; not "
              "with the onecycle schedule, nor with a recipe that scales with the epochs, nor after the "
              "overfitting guard stopped the run; a piecewise run keeps its milestones), the piecewise milestones "
              f"the run has not reached, and {', '.join(k for k in RESUME_MAY_DIFFER if k != 'resume')}")

_UNSET = "<unset>"


def check_resume(path: str, saved: Optional[Dict[str, Any]], config: TrainConfig, *, done: int,
                 stopped_early: Optional[int], recipe_scales_with_epochs: bool) -> None:
    """CheckpointError (naming the options, the run's and the new values, and what may change)
    unless `config` may continue the run whose fingerprint is `saved` after `done` epochs.
    `saved` None: a checkpoint without a fingerprint (only the epoch count is checked)."""
    current = config.fingerprint()
    if config.epochs < done:
        raise CheckpointError(f"checkpoint {path}: epochs={config.epochs} is below the {_epochs(done)} the run has "
                              f"done; give epochs >= {done}")
    if saved is None:
        return
    saved = {"optimizer": "sgd", **saved}  # runs saved before the option existed trained with SGD
    fixed = sorted((set(saved) | set(current)) - {"epochs", "milestones"})
    diff = [k for k in fixed if saved.get(k, _UNSET) != current.get(k, _UNSET)]
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k, _UNSET)!r} vs now {current.get(k, _UNSET)!r}"
                           for k in diff[:4])
        more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
        raise CheckpointError(f"checkpoint {path}: made for another configuration: {detail}{more}; {MAY_CHANGE}")
    before = saved.get("epochs")
    if before is not None and before != config.epochs:
        why = _why_epochs_are_fixed(config, done, stopped_early, recipe_scales_with_epochs)
        if why:
            raise CheckpointError(f"checkpoint {path}: epochs={config.epochs} instead of the run's {before}: {why}; "
                                  f"{MAY_CHANGE}")
    if config.schedule == "piecewise":
        old, new = saved.get("milestones"), current.get("milestones")
        if old != new and not same_learning_rates(old or [], new or [], done):
            keep = " ".join(f"{m:g}" for m in old or [])
            raise CheckpointError(
                f"checkpoint {path}: milestones {_fmt(new)} instead of the run's {_fmt(old)} change the learning "
                f"rate of epochs already trained (the default milestones are 50 % and 75 % of the epochs, so they "
                f"move with epochs): keep the run's with --milestones {keep} (milestones={_fmt(old)}); {MAY_CHANGE}")


def same_learning_rates(old: Sequence[float], new: Sequence[float], done: int) -> bool:
    """Whether two piecewise schedules give the same factor in each of the epochs 0..done-1
    (Piecewise: gamma ** the number of milestones <= epoch)."""
    old, new = sorted(float(m) for m in old), sorted(float(m) for m in new)
    return all(bisect.bisect_right(old, e) == bisect.bisect_right(new, e) for e in range(done))


def _why_epochs_are_fixed(config: TrainConfig, done: int, stopped_early: Optional[int],
                          recipe_scales_with_epochs: bool) -> Optional[str]:
    if stopped_early is not None:
        return (f"the overfitting guard stopped the run at epoch {stopped_early} (training had collapsed); start "
                "a new run")
    if config.schedule == "onecycle":
        return (f"the onecycle schedule rises and falls over all the epochs of a run, so another total would "
                f"change the learning rates of the {_epochs(done)} already trained; start a new run (a run meant to "
                "be extended uses the piecewise schedule with explicit milestones, or constant)")
    if recipe_scales_with_epochs:
        return (f"recipe {config.recipe!r} scales its schedule with the total epochs (e.g. fat's default tau "
                "milestones; give them explicitly with --recipe-options to make a run extendable)")
    return None


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _fmt(milestones) -> str:
    return "[" + ", ".join(f"{m:g}" for m in milestones or []) + "]"
