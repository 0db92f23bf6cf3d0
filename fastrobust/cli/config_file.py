"""`fastrobust train --config FILE`: training options from a TOML or JSON file.

The file holds TrainConfig's options under their own names, the names of a run's config.json,
so that config.json is itself a config file that reproduces its run. Each value is checked on
its own, so that an error names the file and the key; how the file's options combine with the
command line is fastrobust.cli.train's business.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import tomllib
from typing import Any, Dict

from .common import eps_type
from .errors import CLIError, one_line

SUFFIXES = (".toml", ".json")
# An invocation's actions rather than a run's options: config.json records them (a resumed run's
# holds resume), and a file that carried them into a new run would continue or move aside a run.
IGNORED = ("resume", "overwrite")
# Names of the command line's own options that a file spells as TrainConfig does.
WHERE = {"activation": "model_options", "denoise": "model_options", "cifs": "model_options",
         "first_stride": "model_options", "target": "recipe_options"}


def read_config_file(path: str) -> Dict[str, Any]:
    """The TrainConfig options of the .toml or .json file `path`, checked (CLIError naming the
    file and the key otherwise), without those in IGNORED."""
    from ..models import list_models
    from ..train.config import ConfigError, TrainConfig

    values = _parse(path)
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [key for key in values if key not in names]
    if unknown:
        raise CLIError(f"--config {path}: unknown option{'s' if len(unknown) > 1 else ''} "
                       f"{', '.join(_hint(key, names) for key in unknown)}; a config file takes the options of a "
                       f"run's config.json: {', '.join(sorted(names))}")
    values = {key: value for key, value in values.items() if key not in IGNORED}
    for key in ("eps", "alpha"):
        if isinstance(values.get(key), str):  # 8/255, as on the command line
            try:
                values[key] = eps_type(values[key])
            except argparse.ArgumentTypeError as exc:
                raise CLIError(f"--config {path}: {key}: {exc}") from None
    if isinstance(values.get("milestones"), list):
        values["milestones"] = tuple(values["milestones"])
    if values.get("amp") == "none":  # as on the command line (TOML has no null)
        values["amp"] = None
    model = values.get("model")
    if isinstance(model, str) and model not in list_models():
        custom = model.startswith("<module ")  # config.json of a run given an nn.Module
        raise CLIError(f"--config {path}: model {model!r} " + (
            "is a custom nn.Module, which a file cannot rebuild; name a registered model instead" if custom else
            "is no registered model") + f" ({', '.join(list_models())})")
    for key, value in values.items():
        try:
            TrainConfig.from_dict({key: value}).resolved()
        except ConfigError as exc:
            raise CLIError(f"--config {path}: {one_line(exc)}") from None
    return values


def _parse(path: str) -> Dict[str, Any]:
    """The file's table (TOML by tomllib, JSON by json, chosen by the suffix); its syntax errors
    keep the parser's line and column."""
    suffix = path[path.rfind("."):].lower() if "." in path else ""
    if suffix not in SUFFIXES:
        raise CLIError(f"--config {path}: expected a .toml or .json file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CLIError(f"--config {path}: {exc.strerror or exc}") from None
    try:
        values = tomllib.loads(data.decode("utf-8")) if suffix == ".toml" else json.loads(data)
    except tomllib.TOMLDecodeError as exc:
        raise CLIError(f"--config {path}: not valid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CLIError(f"--config {path}: not valid JSON: {exc.msg} (at line {exc.lineno}, column {exc.colno})") \
            from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"--config {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(values, dict):
        raise CLIError(f"--config {path}: expected a JSON object of options, got {type(values).__name__}")
    return values


def _hint(key: str, names) -> str:
    """'key' with where it belongs: the dict option that holds a command-line model or recipe
    option, or the option it is a misspelling of."""
    if key in WHERE:
        return f"{key!r} (it goes in {WHERE[key]})"
    close = difflib.get_close_matches(key.replace("-", "_"), names, n=1)
    return f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)
