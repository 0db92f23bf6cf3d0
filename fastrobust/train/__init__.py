"""Adversarial training: one loop (Trainer / train), recipes as small strategy objects that
compute the loss of a batch (fastrobust.train.recipes), SGD with the papers' schedules,
atomic checkpoints verified by a content hash, exact resume (run folders are never
overwritten: see run_folder and resume_rules), DDP through torchrun, JSON-lines metrics and plots.

    from fastrobust.train import train
    result = train(data="digits", recipe="pgd")        # PGD-AT on sklearn digits, CPU, ~1 min
    result.metrics["final_test_pgd_acc"]

Command line: python -m fastrobust.train --data digits --recipe pgd --out runs/digits-pgd
(torchrun --nproc_per_node N -m fastrobust.train ... for DDP; --resume to continue).
"""
from ..metrics_log import read_metrics
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import DATASET_DEFAULTS, ConfigError, TrainConfig
from .metrics import plot_curves
from .pgd_accuracy import evaluate_pgd
from .recipes import RECIPES, BatchOutput, Recipe, StepContext, create_recipe, register_recipe
from .schedule import build_optimizer, build_scheduler
from .trainer import Trainer, TrainResult, build_model, train

__all__ = ["BatchOutput", "CheckpointError", "ConfigError", "DATASET_DEFAULTS", "RECIPES", "Recipe", "StepContext",
           "TrainConfig", "TrainResult", "Trainer", "build_model", "build_optimizer", "build_scheduler",
           "create_recipe", "evaluate_pgd", "load_checkpoint", "plot_curves", "read_metrics", "register_recipe",
           "save_checkpoint", "train"]
