"""The training loop: one loop for every recipe.

    result = train(TrainConfig(data="digits", recipe="pgd"))   # or train(recipe="pgd", epochs=5)
    result.metrics["final_test_pgd_acc"], result.checkpoint, result.plot_path

Per epoch: recipe.epoch_start; for each batch: recipe.batch_loss (under autocast when amp is
set; attacks get the same dtype through the StepContext) -> zero_grad -> backward (GradScaler
for fp16) -> optimizer step -> schedule step (fastrobust.train.epoch). Loss and accuracy sums
stay on the device; the host synchronises only every `log_every` batches (progress bar) and at
the epoch's end (one all-reduce under DDP). Then: test-set clean / PGD accuracy (every eval_every epochs), the
overfitting guard, metrics.jsonl, and the checkpoint (out/last.pt, atomically; out/best.pt
whenever the PGD accuracy is the best so far).

Distributed: under torchrun each rank trains on its shard of every epoch's permutation
(TensorLoader rank/world_size), attacks its own shard (its own recipe generator), and
DistributedDataParallel averages the gradients; batch_size is global (batch_size //
world_size per rank), so a run with N ranks sees the same batches as a single process.
Only rank 0 writes files.

Reproducibility: torch's global RNG is seeded with config.seed before the model is built; the
data order comes from (seed, epoch), every random draw of a recipe from its generator (seeded
from seed and rank); checkpoints hold the optimizer, schedule, recipe and every RNG state (run_state), so
`resume` continues a run bit for bit on the CPU (2 epochs straight == 1 + resume + 1), and a
finished run resumed with more epochs equals a straight run of that length where resume_rules
allows the change.

Nothing is lost: the run folder is checked before anything is built (run_folder: a folder
holding another run is refused unless overwrite moves it aside), metrics.jsonl is only appended
to, checkpoints carry a content hash checked when read, and weights that are no longer finite
are never saved (FloatingPointError) nor continued from (CheckpointError).
"""
from __future__ import annotations

import inspect
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .. import distributed
from ..data import DatasetInfo, TensorLoader, load_dataset
from ..data.loader import _mix
from .checkpoint import nonfinite_entries, save_checkpoint
from .config import TrainConfig
from .epoch import train_epoch
from .metrics import MetricsWriter, Progress, plot_curves
from .pgd_accuracy import accuracy_counts, as_batches
from .recipes import RECIPES, Recipe, create_recipe
from .run_folder import check_run_folder, prepare_run_folder, write_json_atomically
from .run_state import checkpoint_state, resume
from .schedule import build_optimizer, build_scheduler

AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- models --------------------------------------------------------------------------------

def build_model(name: str, info: DatasetInfo, **options) -> nn.Module:
    """The model `name` of fastrobust.models.create for data set `info`: classes, input
    channels and the Normalize layer's mean/std come from it unless given in options
    (activation, denoise, cifs, first_stride, width, ...: see fastrobust.models.registry)."""
    from ..models import MODELS, create

    defaults = {"num_classes": info.num_classes, "in_channels": info.input_shape[0], "mean": info.mean,
                "std": info.std}
    if name in MODELS and "image_size" in MODELS[name].options:
        defaults["image_size"] = tuple(info.input_shape[1:])  # models whose dense layer depends on it
    return create(name, **{**defaults, **options})


# -- results -------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What train() returns.

    metrics: the last epoch's record plus the final evaluation (final_test_clean_acc,
    final_test_pgd_acc on the whole test set), train_time_s, stopped_early.
    history: every epoch's record (metrics.jsonl). checkpoint: the checkpoint whose weights
    `model` holds (last.pt, or best.pt when the overfitting guard restored it);
    best_checkpoint: out/best.pt (None if never written). model: the trained (unwrapped) model.
    """

    metrics: Dict[str, Any]
    history: List[Dict[str, Any]]
    out_dir: str
    checkpoint: Optional[str]
    best_checkpoint: Optional[str]
    metrics_path: Optional[str]
    plot_path: Optional[str]
    model: nn.Module = field(repr=False)
    stopped_early: Optional[int] = None
    finished: bool = True


# -- the trainer ---------------------------------------------------------------------------

def _recipe_kwargs(recipe_cls, config: TrainConfig) -> Dict[str, Any]:
    """eps / alpha / steps for the recipe where its constructor takes them (alpha and steps
    only when set), plus recipe_options."""
    params = inspect.signature(recipe_cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: Dict[str, Any] = {}
    for name in ("eps", "alpha", "steps"):
        value = getattr(config, name)
        if value is None:
            continue
        if name in params or takes_any:
            kwargs[name] = value
        elif name != "eps":
            raise ValueError(f"{name}={value!r}: recipe {config.recipe!r} has no option {name!r}")
    overlap = sorted(set(kwargs) & set(config.recipe_options))
    if overlap:
        raise ValueError(f"recipe_options {overlap} repeat top-level options; set them once")
    kwargs.update(config.recipe_options)
    return kwargs


class Trainer:
    """One training run: `Trainer(config).fit()`; keyword overrides set config options
    (`Trainer(recipe="standard", epochs=3)`), model=nn.Module trains that module.

    Catastrophic-overfitting guard (config.overfit_guard; on by default for the fgsm recipe),
    as Wong et al. 2020 ("Fast is better than free", train_fgsm.py --early-stop): after every
    epoch, the PGD accuracy (guard_steps steps of eps/4, random start, fixed seed) on one fixed
    training batch (the first batch_size training images) is measured; when it falls below the
    previous epoch's by more than guard_threshold (0.2: 20 points), training stops and the
    weights of the best epoch by that accuracy (out/best.pt) are restored. Wong et al. check the
    first batch of the current epoch, in train mode; the fixed batch in eval mode makes the
    measure comparable from epoch to epoch.

    best.pt always holds the epoch with the highest PGD accuracy: the guard's when the guard
    is on, else the test PGD accuracy (when evaluated).
    """

    def __init__(self, config: Union[TrainConfig, Dict[str, Any], None] = None, *,
                 model: Optional[nn.Module] = None, **overrides):
        if config is None:
            config = TrainConfig()
        elif isinstance(config, dict):
            config = TrainConfig.from_dict(config)
        if model is not None:
            overrides["model"] = model
        cfg = config.replace(**overrides).resolved() if overrides else config.resolved()
        self.config = cfg
        self.dist = distributed.setup(cfg.device)
        self._threads_before: Optional[int] = None
        self.tensorboard = None  # fastrobust.tensorboard.TensorBoardLog of rank 0 with config.tensorboard
        # True while every rank is known to be at the same point (after construction and after a
        # fit that returned); close() only waits for the peers then, never after a failure
        self._ranks_aligned = False
        if self.dist.device.type == "cpu" and cfg.threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(cfg.threads)
        try:
            self._build()
            self._prepare_folder()
        except BaseException:
            self.close()
            raise
        self._ranks_aligned = True

    # -- construction ----------------------------------------------------------------------
    def _build(self) -> None:
        cfg, dist = self.config, self.dist
        device = dist.device
        self.out_dir = cfg.out
        self.last_path = os.path.join(cfg.out, "last.pt")
        self.best_path = os.path.join(cfg.out, "best.pt")
        self.metrics_path = os.path.join(cfg.out, "metrics.jsonl")
        self.plot_path = os.path.join(cfg.out, "curves.png")
        resume_path = (cfg.resume if isinstance(cfg.resume, str) else self.last_path) if cfg.resume else None
        # before anything is loaded or written: a run never lands on another run
        self._move_old_run = check_run_folder(cfg.out, resume_path, cfg.overwrite)
        if cfg.batch_size % dist.world_size:
            raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the world size {dist.world_size}")
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        x, y, info = load_dataset(cfg.data, "train", cfg.data_dir, device, **cfg.data_options)
        if cfg.subset is not None:
            x, y = x[:cfg.subset], y[:cfg.subset]
        xt, yt, _ = load_dataset(cfg.data, "test", cfg.data_dir, device, **cfg.data_options)
        self.info = info
        self.test_data = (xt, yt)

        recipe_cls = RECIPES[cfg.recipe]
        self.recipe: Recipe = create_recipe(cfg.recipe, **_recipe_kwargs(recipe_cls, cfg))

        model = cfg.model if isinstance(cfg.model, nn.Module) else build_model(cfg.model, info, **cfg.model_options)
        # a resumed run loads its whole model from the checkpoint: the structure only (HGD's
        # target weights are in it, and the target file need not exist any more)
        model = (self.recipe.structure if resume_path else self.recipe.prepare)(model, info.num_classes)
        model = model.to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = build_optimizer(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov,
                                         name=cfg.optimizer)

        self.recipe.attach_data(x, y)
        self.loader = TensorLoader(x, y, cfg.batch_size // dist.world_size, shuffle=True, drop_last=True,
                                   augment=info.augmentation(), seed=cfg.seed, rank=dist.rank,
                                   world_size=dist.world_size)
        if len(self.loader) == 0:
            raise ValueError(f"batch_size={cfg.batch_size} is larger than the {x.shape[0]} training images")
        self.steps_per_epoch = min(len(self.loader), cfg.max_steps_per_epoch or len(self.loader))
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, epochs=cfg.epochs,
                                         steps_per_epoch=self.steps_per_epoch, milestones=cfg.milestones,
                                         gamma=cfg.lr_gamma, peak=cfg.onecycle_peak)
        self.autocast_dtype = AMP_DTYPES[cfg.amp]
        self.scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(_mix(cfg.seed, dist.rank, 0x7EC1))
        # attack seeds and mixup draws are host integers: on a GPU they come from a CPU
        # generator so no step waits for the device (on the CPU the one generator serves)
        self.host_generator: Optional[torch.Generator] = None
        if device.type != "cpu":
            self.host_generator = torch.Generator().manual_seed(_mix(cfg.seed, dist.rank, 0x5EED))

        guard_n = min(cfg.batch_size, x.shape[0])
        self.guard_batch = (x[:guard_n], y[:guard_n])
        n_eval = xt.shape[0] if cfg.eval_samples is None else min(cfg.eval_samples, xt.shape[0])
        self.eval_rows = torch.arange(n_eval, device=device)[dist.rank::dist.world_size]

        # trainer state (checkpointed)
        self.epoch = 0
        self.step = 0
        self.finished = False
        self.stopped_early: Optional[int] = None
        self.best_metric = "guard_pgd_acc" if cfg.guard_enabled else ("test_pgd_acc" if cfg.eval_every else None)
        self.best_value: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.guard_prev: Optional[float] = None
        self.train_time = 0.0
        self._best_state: Optional[Dict[str, torch.Tensor]] = None
        self.resumed_from: Optional[str] = None
        # the epoch records of the run so far (rank 0 reads them; fit shares them with the others)
        self.history: List[Dict[str, Any]] = []
        self.moved_aside: Optional[str] = None
        self._folder_started = False
        if resume_path is not None:
            resume(self, resume_path)

        train_model: nn.Module = model
        if dist.enabled:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            train_model = torch.compile(train_model)
        self.train_model = train_model

    def _prepare_folder(self) -> None:
        """Rank 0 moves an old run aside (overwrite), creates the folder and checks it can be
        written, before any epoch is trained; every rank raises the same error if it fails."""
        error: Optional[BaseException] = None
        if self.dist.is_main:
            try:
                self.moved_aside = prepare_run_folder(self.out_dir, self._move_old_run)
            except OSError as exc:
                error = exc
            if self.moved_aside:
                print(f"{self.out_dir} held a run: moved it to {self.moved_aside}", file=sys.stderr, flush=True)
        error = distributed.broadcast_object(error, self.dist)
        if error is not None:
            raise error

    # -- evaluations -----------------------------------------------------------------------
    def _evaluate_test(self, rows: torch.Tensor, steps: int, autocast, seed: int) -> Tuple[float, float]:
        xt, yt = self.test_data
        x, y = xt.index_select(0, rows), yt.index_select(0, rows)
        bs = max(self.config.batch_size // self.dist.world_size, 1) * 4
        counts = accuracy_counts(self.model, as_batches(x, y, bs), self.config.eps, None, steps,
                              _mix(seed, self.dist.rank), autocast, self.config.channels_last, 1,
                              device=self.dist.device)
        counts = distributed.all_reduce_sum(counts.to(self.dist.device), self.dist).tolist()
        return counts[1] / max(counts[0], 1), counts[2] / max(counts[0], 1)

    def _guard_accuracy(self) -> float:
        x, y = self.guard_batch
        counts = accuracy_counts(self.model, [(x, y)], self.config.eps, None, self.config.guard_steps,
                              _mix(self.config.seed, 0x6A4D), self.autocast_dtype, self.config.channels_last, 1)
        n, _, robust = counts.tolist()
        return robust / max(n, 1)

    # -- the run ---------------------------------------------------------------------------
    def fit(self, stop_after: Optional[int] = None) -> TrainResult:
        """Trains until config.epochs (from where a resumed run stopped). stop_after=k returns
        after epoch k as if the run had been interrupted there (its checkpoint is written as
        usual; a later resume continues it)."""
        cfg, dist = self.config, self.dist
        main = dist.is_main
        writer = MetricsWriter(self.metrics_path, enabled=main)
        if main:
            self._start_folder(writer)
            if cfg.tensorboard and self.tensorboard is None:
                from ..tensorboard import TensorBoardLog

                self.tensorboard = TensorBoardLog(cfg.out)
        # every rank holds the (all-reduced, identical) records; earlier epochs from rank 0's file
        self.history = distributed.broadcast_object(self.history if main else None, dist)
        progress = Progress(cfg.progress and main)
        interrupted = False
        self._ranks_aligned = False
        try:
            epoch = self.epoch
            while not self.finished and epoch < cfg.epochs:
                if stop_after is not None and epoch >= stop_after:
                    interrupted = True
                    break
                t_epoch = time.perf_counter()
                record = train_epoch(self, epoch, progress)
                self._check_finite(epoch + 1)
                self.epoch = epoch = epoch + 1
                collapsed, new_best = self._end_of_epoch(record)
                self.train_time += time.perf_counter() - t_epoch
                record["train_time_s"] = self.train_time
                progress.end_epoch({"loss": record["train_loss"], "clean acc": record["train_clean_acc"],
                                    "adv acc": record["train_adv_acc"], "img/s": record["images_per_s"],
                                    "test acc": record.get("test_clean_acc"),
                                    "test pgd acc": record.get("test_pgd_acc"),
                                    "guard acc": record.get("guard_pgd_acc")})
                if collapsed:
                    self.stopped_early = epoch
                    self.finished = True
                elif epoch >= cfg.epochs:
                    self.finished = True
                writer.append(record)
                if self.tensorboard is not None:
                    self.tensorboard.epoch(record)
                self.history.append(record)
                state = checkpoint_state(self)
                if main:
                    save_checkpoint(self.last_path, state)
                    if new_best:
                        save_checkpoint(self.best_path, state)
                if collapsed and self._best_state is not None:
                    self.model.load_state_dict(self._best_state)
                distributed.barrier(dist)
        finally:
            progress.close()
        result = self._result(interrupted)
        self._ranks_aligned = True
        return result

    def _start_folder(self, writer: MetricsWriter) -> None:
        """config.json (this invocation's options, written atomically) and, for a run that
        continues another folder's checkpoint, the records of the epochs it inherits.
        metrics.jsonl is only ever appended to: a resumed run adds its epochs after the lines
        already there (read_metrics keeps the last record of an epoch)."""
        os.makedirs(self.out_dir, exist_ok=True)
        write_json_atomically(os.path.join(self.out_dir, "config.json"), self.config.to_dict())
        if self._folder_started:
            return
        self._folder_started = True
        continuing_here = self.resumed_from is not None and os.path.exists(self.metrics_path) and \
            os.path.samefile(os.path.dirname(os.path.abspath(self.resumed_from)), self.out_dir)
        if not continuing_here:
            for record in self.history:
                writer.append(record)

    def _check_finite(self, epoch: int) -> None:
        """FloatingPointError when the weights are no longer finite (the loss is checked before
        each logged step; the last optimizer step of an epoch can still blow the weights up):
        such weights are never saved, last.pt keeps the previous epoch."""
        bad = nonfinite_entries(self.model.state_dict())
        if bad:
            kept = f"{self.last_path} keeps epoch {epoch - 1}" if epoch > 1 else "nothing was saved"
            raise FloatingPointError(f"the model's weights are not finite after epoch {epoch} (NaN or inf in "
                                     f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); {kept}; lower the "
                                     "learning rate or check the recipe")

    def _end_of_epoch(self, record: Dict[str, Any]) -> Tuple[bool, bool]:
        """Evaluations, the guard and the best-so-far bookkeeping: (training collapsed, new best)."""
        cfg = self.config
        epoch = record["epoch"]
        if cfg.eval_every and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            clean, robust = self._evaluate_test(self.eval_rows, cfg.eval_steps, self.autocast_dtype,
                                                _mix(cfg.seed, epoch, 0xE7A1))
            record["test_clean_acc"], record["test_pgd_acc"] = clean, robust
        collapsed = False
        if cfg.guard_enabled:
            acc = self._guard_accuracy()
            record["guard_pgd_acc"] = acc
            if self.guard_prev is not None and acc < self.guard_prev - cfg.guard_threshold:
                collapsed = True
                record["overfit_guard"] = (f"PGD accuracy on the guard batch fell from {self.guard_prev:.3f} to "
                                           f"{acc:.3f}: catastrophic overfitting, stopped; best epoch "
                                           f"{self.best_epoch} restored")
            self.guard_prev = acc
        value = record.get(self.best_metric) if self.best_metric else None
        new_best = value is not None and not collapsed and (self.best_value is None or value > self.best_value)
        if new_best:
            self.best_value, self.best_epoch = value, epoch
            if cfg.guard_enabled:
                self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return collapsed, new_best

    def _result(self, interrupted: bool = False) -> TrainResult:
        cfg, dist = self.config, self.dist
        history = list(self.history)
        metrics: Dict[str, Any] = dict(history[-1]) if history else {}
        metrics["train_time_s"] = self.train_time
        metrics["stopped_early"] = self.stopped_early
        metrics["best_epoch"], metrics["best_" + (self.best_metric or "metric")] = self.best_epoch, self.best_value
        plot = None
        if self.finished and not interrupted:
            if cfg.final_eval:
                rows = torch.arange(self.test_data[1].shape[0], device=dist.device)[dist.rank::dist.world_size]
                clean, robust = self._evaluate_test(rows, 20, None, _mix(cfg.seed, 0xF1A1))
                metrics["final_test_clean_acc"], metrics["final_test_pgd_acc"] = clean, robust
                metrics["final_eval"] = f"PGD-20 (alpha=eps/4, random start) at eps={cfg.eps:g}, float32, " \
                                        f"{self.test_data[1].shape[0]} test images"
            if dist.is_main:
                write_json_atomically(os.path.join(self.out_dir, "results.json"), metrics)
                if cfg.plot:
                    plot = plot_curves(history, self.plot_path, title=f"{cfg.data} {cfg.recipe} eps={cfg.eps:g}")
        restored = self.stopped_early is not None and self._best_state is not None
        return TrainResult(
            metrics=metrics, history=history, out_dir=self.out_dir,
            checkpoint=self.best_path if restored else self.last_path,
            best_checkpoint=self.best_path if os.path.exists(self.best_path) else None,
            metrics_path=self.metrics_path, plot_path=plot, model=self.model,
            stopped_early=self.stopped_early, finished=self.finished and not interrupted)

    def close(self) -> None:
        """Destroys the process group if this trainer created it and restores torch's thread count.

        After a clean construction or fit the ranks meet at a barrier first; after an exception
        (one rank may be stuck in a collective) the group is left to the process's exit."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None
        # the DistributedDataParallel wrapper keeps the process group alive: release it first
        if hasattr(self, "model"):
            self.train_model = self.model
        distributed.cleanup(self.dist, synchronize=self._ranks_aligned)


def train(config: Union[TrainConfig, Dict[str, Any], None] = None, *, model: Optional[nn.Module] = None,
          **overrides) -> TrainResult:
    """Runs a whole training (see Trainer and TrainConfig); returns a TrainResult."""
    trainer = Trainer(config, model=model, **overrides)
    try:
        return trainer.fit()
    finally:
        trainer.close()
