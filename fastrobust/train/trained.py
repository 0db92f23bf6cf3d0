"""A trained model rebuilt from its training checkpoint alone: the architecture from the
checkpoint's configuration, the weights from its state (verified), the data set's test split
(whose DatasetInfo the architecture needs: classes, channels, mean and std).

    model, config, (x_test, y_test), state = load_trained(path, device)

Every problem with the file, its configuration, its weights or its data is a CheckpointError
whose message names the file (fastrobust eval turns it into a one-line CLI error; the HGD
recipe's `others` into an error naming the option).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .checkpoint import CheckpointError, check_finite_weights, load_checkpoint, load_model_state
from .config import ConfigError, TrainConfig


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def load_trained(path: str, device="cpu", data_dir: Optional[str] = None
                 ) -> Tuple[nn.Module, TrainConfig, Tuple[torch.Tensor, torch.Tensor], Dict[str, Any]]:
    """(model in eval mode on device, its TrainConfig, (x_test, y_test) on device, the
    checkpoint's state). data_dir: where the CIFAR files are when not where they were."""
    from ..data import load_dataset
    from .recipes import RECIPES, create_recipe
    from .trainer import _recipe_kwargs, build_model

    state = load_checkpoint(path)  # verifies the content hash and the entries' types
    check_finite_weights(path, state["model"])  # a model with NaN weights gives no result
    try:
        config = TrainConfig.from_dict(state["config"])
        config.validate()
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its stored configuration is not readable by this fastrobust "
                              f"({_one_line(exc)})") from exc
    if not isinstance(config.model, str) or config.model.startswith("<module"):
        raise CheckpointError(f"checkpoint {path}: trained with a custom nn.Module ({config.model}), which cannot be "
                              "rebuilt from its name; evaluate it with fastrobust.eval.evaluate")
    if config.recipe not in RECIPES:
        raise CheckpointError(f"checkpoint {path}: unknown recipe {config.recipe!r}")
    try:
        x, y, info = load_dataset(config.data, "test", data_dir or config.data_dir, device, **config.data_options)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        stored_options = str(exc).startswith("load_dataset(")  # the checkpoint's data options
        if isinstance(exc, TypeError) and not stored_options:
            raise
        hint = "" if data_dir or stored_options else " (pass --data-dir)"
        raise CheckpointError(f"checkpoint {path}: {_one_line(exc)}" if stored_options
                              else _one_line(exc) + hint) from exc
    try:
        model = build_model(config.model, info, **config.model_options)
        model = create_recipe(config.recipe, **_recipe_kwargs(RECIPES[config.recipe], config)).structure(
            model, info.num_classes)
        load_model_state(path, model, state["model"])
    except ValueError as exc:
        raise CheckpointError(_one_line(exc)) from exc
    return model.to(device).eval(), config, (x, y), state
