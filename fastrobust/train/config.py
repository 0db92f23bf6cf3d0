"""TrainConfig: every option of a training run, its defaults, and checks with clear errors.

Options left at None take a default that depends on the data set (DATASET_DEFAULTS) and, where
the recipe class declares them, on the recipe (a class attribute
`train_defaults = {"cifar10": {...}, "*": {...}}` of the recipe, e.g. FGSM's one-cycle
schedule): explicit value > recipe default for the data set > recipe default for "*" > data
set default. `TrainConfig.resolved()` returns the config with every such option filled in.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from torch import nn

SCHEDULES = ("piecewise", "onecycle", "constant")
OPTIMIZERS = ("sgd", "adam")
# the piecewise schedule's milestones when none are given, as fractions of the epochs (a recipe's
# train_defaults may give its own "milestone_fractions", e.g. HGD's 60 % and 90 %)
MILESTONE_FRACTIONS = (0.5, 0.75)
AMP_MODES = (None, "bf16", "fp16")

# Options that a data set (or a recipe's train_defaults) fills in when left at None.
# digits (8x8, 16 grey levels, 1438 training images): eps=0.15 is about 2.4 grey levels.
# MNIST's 0.3 is too large for these downsampled, grey-stroked digits (PGD-AT clean accuracy
# falls to 87 %), 0.1 too small to separate the methods much (standard training keeps 55 %
# PGD-20 accuracy). Measured on the development machine's CPU (SmallCNN width 32, seed 0, 10
# epochs, batch 64, one-cycle lr 0.05): standard 96.9 % clean / 17.8 % PGD-20; PGD-AT (PGD-10,
# alpha eps/4) 98.6 % clean / 72.1 % PGD-20 in about 35 s of training.
DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "digits": dict(model="small_cnn", eps=0.15, epochs=10, batch_size=64, lr=0.05, weight_decay=5e-4,
                   optimizer="sgd", schedule="onecycle", threads=1),
    # Madry et al. / Rice et al. PGD-AT on CIFAR: PreActResNet-18, SGD lr 0.1 (x0.1 at 50 % and
    # 75 % of 200 epochs), batch 128, weight decay 5e-4, eps 8/255.
    "cifar10": dict(model="preact_resnet18", eps=8 / 255, epochs=200, batch_size=128, lr=0.1, weight_decay=5e-4,
                    optimizer="sgd", schedule="piecewise", threads=0),
    "cifar100": dict(model="preact_resnet18", eps=8 / 255, epochs=200, batch_size=128, lr=0.1, weight_decay=5e-4,
                     optimizer="sgd", schedule="piecewise", threads=0),
    "synthetic": dict(model="small_cnn", eps=8 / 255, epochs=10, batch_size=128, lr=0.05, weight_decay=5e-4,
                      optimizer="sgd", schedule="onecycle", threads=0),
}
FILLED = ("model", "eps", "epochs", "batch_size", "lr", "weight_decay", "optimizer", "schedule", "threads")

# On/off options (overwrite and overfit_guard have their own checks).
FLAGS = ("nesterov", "channels_last", "compile", "final_eval", "progress", "plot", "track_clean", "tensorboard")

# Options that may differ between a run and its resumption (they do not change the trajectory);
# epochs and milestones may change too, within the limits of fastrobust.train.resume_rules.
RESUME_MAY_DIFFER = ("out", "resume", "overwrite", "progress", "plot", "tensorboard", "log_every", "device", "compile", "data_dir",
                     "threads")


class ConfigError(ValueError):
    """An invalid training option (the message names it)."""


@dataclass
class TrainConfig:
    """All options of `fastrobust.train.train`.

    Model and data
      model:          a name of fastrobust.models.list_models() ("small_cnn", "preact_resnet18",
                      "resnet18", "wrn28_10", "wrn34_10", "wide_resnet") or an nn.Module
                      (trained in place); None: the data set's default.
      model_options:  options of fastrobust.models.create (activation, denoise, cifs,
                      first_stride, width, ...); num_classes, in_channels, mean and std come
                      from the data set.
      data:           "digits", "cifar10", "cifar100" or "synthetic"; data_dir for CIFAR;
                      data_options: load_dataset options (e.g. synthetic n, shape).
      subset:         train on the first `subset` training images only (tests, quick runs).
    Recipe
      recipe:         a name of fastrobust.train.recipes.RECIPES ("standard", "pgd", ...).
      recipe_options: the recipe's own options (see its docstring).
      eps, alpha, steps: the training attack's radius (pixel scale, inputs in [0, 1]), step and
                      steps; passed to the recipe where it takes them (alpha/steps None: the
                      recipe's default). eps is also the radius of the PGD evaluations.
    Optimisation
      epochs, batch_size (global: split evenly over DDP ranks), optimizer "sgd" (with
      momentum, nesterov and coupled L2 weight_decay, as the adversarial-training papers) or
      "adam" (momentum is its beta1, beta2 0.999; weight_decay coupled L2, as torch.optim.Adam;
      HGD's default), lr (peak), momentum 0.9, nesterov, weight_decay; schedule "piecewise" (lr x lr_gamma at each of `milestones`,
      epochs; default 50 % and 75 % of the epochs (a recipe may set its own fractions), Madry et al. / Rice et al.), "onecycle"
      (linear 0 -> lr over the first onecycle_peak of the iterations, then linear to 0: Wong
      et al.'s cyclic schedule) or "constant". The schedule is stepped every iteration.
      max_steps_per_epoch: cut every epoch after this many batches (tests, quick runs).
    Speed
      amp: None (float32), "bf16" or "fp16" autocast (fp16 with a GradScaler); channels_last;
      compile: torch.compile the model used for training.
      threads: torch.set_num_threads for the run on the CPU (restored by train() at the end);
      0 leaves torch's setting; None: the data set's default, 1 for digits (its 8x8 model gains
      nothing from intra-op threads, and two OpenMP threads slow down up to tenfold when other
      processes busy a 2-core CPU), 0 otherwise.
    Run
      device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1"; under torchrun each rank
      takes cuda:LOCAL_RANK. seed: everything random derives from it. out: run folder
      (checkpoints last.pt / best.pt, metrics.jsonl, curves.png, config.json); None:
      runs/<data>-<recipe>. resume: True continues the run in out from out/last.pt, or the path
      of a checkpoint (into out: its own folder, or a folder holding no run); the options must
      be the run's, except those fastrobust.train.resume_rules lets change (epochs, to extend a
      run where the schedule allows it). overwrite: a new run into a folder that holds a run
      (config.json, last.pt, best.pt or metrics.jsonl) is refused unless overwrite=True, which
      moves the old folder aside to OUT.old-YYYYmmdd-HHMMSS (never deletes it).
    Evaluation and overfitting guard
      eval_every: test-set clean and PGD accuracy every this many epochs (0: never during
      training) on the first eval_samples test images (None: all); eval_steps PGD steps of
      eps/4 with a random start. final_eval: clean and PGD accuracy on the whole test set at
      the end. overfit_guard: Wong et al.'s catastrophic-overfitting check (None: on for the
      fgsm recipe only); see Trainer. guard_threshold: the drop (fraction) that stops training
      (0.2 = 20 points); guard_steps: PGD steps of the check.
    Output
      log_every: batches between progress updates (the only host synchronisations of the
      loop besides the epoch's end); progress: tqdm bars; plot: curves.png at the end;
      tensorboard: TensorBoard logs of the metrics in out/tensorboard (fastrobust.tensorboard;
      needs the tensorboard package);
      track_clean: clean accuracy of the training batches where the recipe computes no clean
      logits (one extra no-grad forward in eval mode per batch; training is unaffected).
    """

    model: Union[str, nn.Module, None] = None
    model_options: Dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    data_dir: Optional[str] = None
    data_options: Dict[str, Any] = field(default_factory=dict)
    subset: Optional[int] = None
    recipe: str = "pgd"
    recipe_options: Dict[str, Any] = field(default_factory=dict)
    eps: Optional[float] = None
    alpha: Optional[float] = None
    steps: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    optimizer: Optional[str] = None
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: Optional[float] = None
    schedule: Optional[str] = None
    milestones: Optional[Tuple[float, ...]] = None
    lr_gamma: float = 0.1
    onecycle_peak: float = 0.5
    max_steps_per_epoch: Optional[int] = None
    amp: Optional[str] = None
    channels_last: bool = False
    compile: bool = False
    threads: Optional[int] = None
    device: str = "auto"
    seed: int = 0
    out: Optional[str] = None
    resume: Union[bool, str] = False
    overwrite: bool = False
    eval_every: int = 1
    eval_samples: Optional[int] = 1000
    eval_steps: int = 20
    final_eval: bool = True
    overfit_guard: Optional[bool] = None
    guard_threshold: float = 0.2
    guard_steps: int = 5
    log_every: int = 20
    progress: bool = True
    plot: bool = True
    track_clean: bool = True
    tensorboard: bool = False

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """A config from a dict; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training options {unknown}; valid options: {', '.join(sorted(names))}")
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown training options {unknown}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """Plain values only (JSON- and torch.load(weights_only=True)-safe); a model given as a
        module is recorded by its class name."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, nn.Module):
                value = f"<module {type(value).__name__}>"
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = _plain(value, f.name)
        return out

    # -- defaults and checks ---------------------------------------------------------------
    def resolved(self) -> "TrainConfig":
        """A checked copy with every data-set/recipe default filled in."""
        from .recipes import RECIPES

        self.validate()
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe: unknown recipe {self.recipe!r}; choose one of {', '.join(sorted(RECIPES))}")
        recipe_defaults = getattr(RECIPES[self.recipe], "train_defaults", None) or {}
        filled = {}
        for name in FILLED:
            if getattr(self, name) is not None:
                continue
            for source in (recipe_defaults.get(self.data, {}), recipe_defaults.get("*", {}),
                           DATASET_DEFAULTS[self.data]):
                if name in source:
                    filled[name] = source[name]
                    break
        for name in ("milestones", "lr_gamma", "onecycle_peak"):
            for source in (recipe_defaults.get(self.data, {}), recipe_defaults.get("*", {})):
                if name in source and getattr(self, name) == getattr(TrainConfig, name, None):
                    filled[name] = source[name]
                    break
        out = dataclasses.replace(self, **filled)
        if out.milestones is None and out.schedule == "piecewise":
            fractions = recipe_defaults.get(self.data, {}).get(
                "milestone_fractions", recipe_defaults.get("*", {}).get("milestone_fractions", MILESTONE_FRACTIONS))
            out.milestones = tuple(f * out.epochs for f in fractions)
        if out.milestones is not None:
            out.milestones = tuple(float(m) for m in out.milestones)
        if out.out is None:
            out.out = f"runs/{out.data}-{out.recipe}"
        out.validate()
        return out

    @property
    def guard_enabled(self) -> bool:
        return self.recipe == "fgsm" if self.overfit_guard is None else bool(self.overfit_guard)

    def validate(self) -> None:
        """Raises ConfigError naming the first invalid option."""
        from fastrobust.data import DATASETS

        if not (self.model is None or isinstance(self.model, (str, nn.Module))):
            raise ConfigError(f"model must be a name or an nn.Module, got {type(self.model).__name__}")
        for name in ("model_options", "data_options", "recipe_options"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        if self.data not in DATASETS:
            raise ConfigError(f"data: unknown data set {self.data!r}; choose one of {', '.join(DATASETS)}")
        if not isinstance(self.recipe, str):
            raise ConfigError(f"recipe must be a name, got {type(self.recipe).__name__}")
        _optional_number(self.eps, "eps", minimum=0.0)
        _optional_number(self.alpha, "alpha", minimum=0.0)
        _optional_int(self.steps, "steps", 0)
        _optional_int(self.epochs, "epochs", 1)
        _optional_int(self.batch_size, "batch_size", 1)
        _optional_int(self.subset, "subset", 1)
        _optional_int(self.max_steps_per_epoch, "max_steps_per_epoch", 1)
        _optional_number(self.lr, "lr", minimum=0.0)
        _optional_number(self.weight_decay, "weight_decay", minimum=0.0)
        _number(self.momentum, "momentum", 0.0, 1.0)
        _number(self.lr_gamma, "lr_gamma", 0.0, 1.0)
        _number(self.onecycle_peak, "onecycle_peak", 0.0, 1.0)
        if not 0.0 < self.onecycle_peak <= 1.0:
            raise ConfigError(f"onecycle_peak must be in (0, 1], got {self.onecycle_peak!r}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.optimizer == "adam" and self.nesterov:
            raise ConfigError("nesterov is an option of the sgd optimizer, not of adam")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.milestones is not None:
            if isinstance(self.milestones, (str, bytes)) or not isinstance(self.milestones, Sequence):
                raise ConfigError(f"milestones must be a list of epochs, got {self.milestones!r}")
            for m in self.milestones:
                _number(m, "milestones", 0.0, math.inf)
            if list(self.milestones) != sorted(self.milestones):
                raise ConfigError(f"milestones must be increasing, got {list(self.milestones)}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if not isinstance(self.device, str):
            raise ConfigError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {self.device!r}")
        for name in ("data_dir", "out"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ConfigError(f"{name} must be a folder path, got {value!r}")
        for name in FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.tensorboard:
            from fastrobust import tensorboard

            if not tensorboard.available():
                raise ConfigError(f"tensorboard: the tensorboard package is not installed; {tensorboard.INSTALL}")
        _optional_int(self.seed, "seed", 0)
        _optional_int(self.threads, "threads", 0)
        if not isinstance(self.resume, (bool, str)):
            raise ConfigError(f"resume must be a bool or a checkpoint path, got {self.resume!r}")
        if not isinstance(self.overwrite, bool):
            raise ConfigError(f"overwrite must be True or False, got {self.overwrite!r}")
        if self.overwrite and self.resume is True:
            raise ConfigError("overwrite=True (--overwrite) starts a new run with the old one moved aside, resume=True "
                              "(--resume) continues the run in out: give one of them")
        _optional_int(self.eval_every, "eval_every", 0)
        _optional_int(self.eval_samples, "eval_samples", 1)
        _optional_int(self.eval_steps, "eval_steps", 0)
        _optional_int(self.guard_steps, "guard_steps", 1)
        _number(self.guard_threshold, "guard_threshold", 0.0, 1.0)
        _optional_int(self.log_every, "log_every", 1)
        if self.overfit_guard is not None and not isinstance(self.overfit_guard, bool):
            raise ConfigError(f"overfit_guard must be None, True or False, got {self.overfit_guard!r}")

    def fingerprint(self) -> Dict[str, Any]:
        """The options that decide the training trajectory (a resumed run must match them)."""
        d = self.to_dict()
        for name in RESUME_MAY_DIFFER:
            d.pop(name, None)
        return d


def _plain(value, name):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, name) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, name) for k, v in value.items()}
    raise ConfigError(f"{name}: option values must be plain (numbers, strings, lists, dicts), got "
                      f"{type(value).__name__}")


def _number(value, name, lo, hi):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")


def _optional_number(value, name, minimum):
    """None or a finite number >= minimum (inf would overflow where the value is formatted or
    scaled, and is no radius or learning rate)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name} must be a finite number >= {minimum}, got {value!r}")


def _optional_int(value, name, minimum):
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


# -- command line ---------------------------------------------------------------------------

def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser(prog: str = "python -m fastrobust.train") -> argparse.ArgumentParser:
    """Every TrainConfig option as --option-name (dict options take JSON, e.g.
    --recipe-options '{"beta": 6}'; --resume alone means resume from out/last.pt)."""
    p = argparse.ArgumentParser(prog=prog, description="Adversarial training with fastrobust.train")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("model_options", "data_options", "recipe_options"):
            p.add_argument(flag, type=json.loads, default=None, help="JSON object")
        elif f.name == "resume":
            p.add_argument(flag, nargs="?", const=True, default=None,
                           help="continue from OUT/last.pt (or the checkpoint given)")
        elif f.name == "milestones":
            p.add_argument(flag, type=float, nargs="+", default=None, help="epochs of the piecewise lr drops")
        elif f.name in ("nesterov", "channels_last", "compile", "final_eval", "progress", "plot", "track_clean",
                        "tensorboard",
                        "overfit_guard", "overwrite"):
            p.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=None, help="true/false")
        elif f.name in ("eps", "alpha", "lr", "momentum", "weight_decay", "lr_gamma", "onecycle_peak",
                        "guard_threshold"):
            p.add_argument(flag, type=float, default=None)
        elif f.name in ("steps", "epochs", "batch_size", "subset", "max_steps_per_epoch", "seed", "eval_every",
                        "threads", "eval_samples", "eval_steps", "guard_steps", "log_every"):
            p.add_argument(flag, type=int, default=None)
        elif f.name == "amp":
            p.add_argument(flag, choices=["bf16", "fp16", "none"], default=None)
        else:
            p.add_argument(flag, type=str, default=None)
    return p


def config_from_args(argv=None) -> TrainConfig:
    """A TrainConfig from command-line arguments (unset options keep their defaults)."""
    ns = build_parser().parse_args(argv)
    values = {k: v for k, v in vars(ns).items() if v is not None}
    if values.get("amp") == "none":
        values["amp"] = None
    if "milestones" in values:
        values["milestones"] = tuple(values["milestones"])
    return TrainConfig.from_dict(values)
