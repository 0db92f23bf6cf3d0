"""The models `fastrobust eval --model SPEC` and `--model-file PATH.py:FACTORY` evaluate: the
architecture built from its definition, the weights read from a local file (nothing is
downloaded), a Normalize layer put in front when asked.

    torchvision:NAME    torchvision.models.get_model(NAME, weights=None, num_classes=K)
    timm:NAME           timm.create_model(NAME, pretrained=False, num_classes=K, in_chans=C)
    robustbench:NAME    the architecture of an entry of robustbench's model zoo
                        (robustbench.model_zoo.models.model_dicts), for the --data set and L-inf;
                        robustbench:THREAT/NAME, robustbench:DATASET/THREAT/NAME choose others
    fastrobust:NAME     fastrobust.models.create(NAME, num_classes=K, in_channels=C)
    --model-file PATH.py:FACTORY   FACTORY(num_classes=K) from that file, FACTORY() when it
                        takes no num_classes

K is --num-classes (default: the data set's classes), C the data's channels. The packages are
imported only when a spec names them. Every problem is a one-line CLIError naming the option.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import CLIError, one_line

SOURCES = ("torchvision", "timm", "robustbench", "fastrobust")
# Prefixes that wrappers put before every key of a saved state_dict: DataParallel / DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
STATE_DICT_KEYS = ("state_dict", "model")  # where common checkpoint layouts keep the state_dict


# -- option types ------------------------------------------------------------------------------

def model_spec_type(text: str) -> str:
    """--model SOURCE:NAME, checked when parsed (the package is imported only when building)."""
    source, sep, name = text.partition(":")
    if not sep or source not in SOURCES or not name.strip():
        raise argparse.ArgumentTypeError(f"expected SOURCE:NAME with SOURCE one of {', '.join(SOURCES)} (e.g. "
                                         f"torchvision:resnet18), got {text!r}; a model of your own: --model-file")
    return text


def model_file_type(text: str) -> Tuple[str, str]:
    """--model-file PATH.py:FACTORY as (path, factory name)."""
    path, _, factory = text.rpartition(":")
    if not path or not factory.isidentifier():
        raise argparse.ArgumentTypeError(f"expected PATH.py:FACTORY (a Python file and the name of the function "
                                         f"or class in it that builds the model), got {text!r}")
    return path, factory


# -- building the architecture -------------------------------------------------------------------

def _require(module: str, package: str, spec: str):
    """The module; a missing package is an error saying how to get it (and what else works)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CLIError(f"--model {spec}: needs the {package} package ({type(exc).__name__}: {one_line(exc)}); "
                       f"pip install {package}, or give the architecture with --model-file PATH.py:FACTORY"
                       ) from exc


def _torchvision(name: str, spec: str, num_classes: int, channels: int) -> nn.Module:
    models = _require("torchvision.models", "torchvision", spec)
    return models.get_model(name, weights=None, num_classes=num_classes)


def _timm(name: str, spec: str, num_classes: int, channels: int) -> nn.Module:
    timm = _require("timm", "timm", spec)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=channels)


def _fastrobust(name: str, spec: str, num_classes: int, channels: int) -> nn.Module:
    from .. import models

    return models.create(name, num_classes=num_classes, in_channels=channels)


def _robustbench_zoo(name: str, spec: str, data: str) -> Callable[[], nn.Module]:
    """The architecture constructor of robustbench's zoo entry [[DATASET/]THREAT/]NAME (DATASET
    default: --data, THREAT default: Linf): its definitions, never its downloads."""
    zoo_module = _require("robustbench.model_zoo.models", "robustbench", spec)
    enums = importlib.import_module("robustbench.model_zoo.enums")
    *where, model_name = name.split("/")
    if len(where) > 2:
        raise CLIError(f"--model {spec}: expected robustbench:[[DATASET/]THREAT/]NAME, e.g. "
                       "robustbench:cifar10/Linf/Carmon2019Unlabeled")
    dataset = where[0] if len(where) == 2 else data
    threat = where[-1] if where else "Linf"
    try:
        zoo = zoo_module.model_dicts[enums.BenchmarkDataset(dataset)][enums.ThreatModel(threat)]
    except (ValueError, KeyError):
        datasets = ", ".join(d.value for d in enums.BenchmarkDataset)
        threats = ", ".join(t.value for t in enums.ThreatModel)
        raise CLIError(f"--model {spec}: robustbench has no {dataset} {threat} model zoo (data sets: {datasets}; "
                       f"threat models: {threats}); write robustbench:DATASET/THREAT/NAME") from None
    if model_name not in zoo:
        some = ", ".join(list(zoo)[:5])
        raise CLIError(f"--model {spec}: {model_name!r} is not in robustbench's {dataset} {threat} model zoo "
                       f"({len(zoo)} models, e.g. {some})")
    return zoo[model_name]["model"]


BUILDERS: Dict[str, Callable[[str, str, int, int], nn.Module]] = {
    "torchvision": _torchvision, "timm": _timm, "fastrobust": _fastrobust}


def _built(what: str, build: Callable[[], object]) -> nn.Module:
    """build() as an nn.Module; whatever the third-party or user code raises becomes one line
    naming the option (--debug shows the traceback)."""
    try:
        model = build()
    except CLIError:
        raise
    except Exception as exc:  # noqa: BLE001 - code outside fastrobust: any failure is the spec's
        raise CLIError(f"{what}: building the model failed ({type(exc).__name__}: {one_line(exc)})") from exc
    if not isinstance(model, nn.Module):
        raise CLIError(f"{what}: built a {type(model).__name__}, not a torch.nn.Module")
    return model


def build_model(spec: str, data: str, input_shape: Sequence[int], num_classes: int,
                classes_given: bool) -> nn.Module:
    """The architecture of --model SPEC (randomly initialised) for num_classes outputs and the
    data's channels. robustbench's architectures have a fixed head: --num-classes is refused."""
    source, _, name = spec.partition(":")
    what = f"--model {spec}"
    if source == "robustbench":
        if classes_given:
            raise CLIError(f"--num-classes: robustbench architectures have their zoo's number of classes; "
                           f"drop it for {what}")
        return _built(what, lambda: _robustbench_zoo(name, spec, data)())
    return _built(what, lambda: BUILDERS[source](name, spec, num_classes, int(input_shape[0])))


def _takes(fn: Callable, parameter: str) -> bool:
    """Whether fn accepts the keyword `parameter` (by name or through **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return parameter in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_from_file(path: str, factory_name: str, num_classes: int) -> nn.Module:
    """FACTORY(num_classes=K) (or FACTORY()) of the Python file at path, imported as a module
    of its own (registered in sys.modules, so that dataclasses and pickling inside it work)."""
    what = f"--model-file {path}:{factory_name}"
    if not os.path.isfile(path):
        raise CLIError(f"{what}: no such file {path}")
    module_name = "fastrobust_model_file_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CLIError(f"{what}: {path} is not a Python file (name it *.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: any failure is one line
        del sys.modules[module_name]
        raise CLIError(f"{what}: importing {path} failed ({type(exc).__name__}: {one_line(exc)})") from exc
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise CLIError(f"{what}: {path} defines no function or class {factory_name!r}")
    kwargs = {"num_classes": num_classes} if _takes(factory, "num_classes") else {}
    return _built(what, lambda: factory(**kwargs))


# -- weights, normalisation, the input check --------------------------------------------------

def _state_dict(obj) -> Optional[Dict[str, torch.Tensor]]:
    """The state_dict in a loaded file: the object itself or the dict under one of
    STATE_DICT_KEYS (the layouts training scripts write), else None."""
    candidates = [obj] + ([obj.get(k) for k in STATE_DICT_KEYS] if isinstance(obj, dict) else [])
    for c in candidates:
        if isinstance(c, dict) and c and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in c.items()):
            return c
    return None


def _unwrapped(state: Dict[str, torch.Tensor], own_keys: Sequence[str]) -> Dict[str, torch.Tensor]:
    """state without the prefix a wrapper (DataParallel, torch.compile) puts on every key,
    unless the model's own keys carry it too."""
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in own_keys):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes (the report records which weights it measured)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(model: nn.Module, path: str, what: str) -> None:
    """Loads the --weights file into model: torch.load(weights_only=True) of a state_dict, or a
    dict holding one (STATE_DICT_KEYS), wrapper prefixes stripped. A file that does not fit the
    architecture lists a few missing / unexpected / differently shaped keys; NaN or inf weights
    are refused (no number is reported for such a model)."""
    from ..train.checkpoint import few_keys, nonfinite_entries, state_dict_mismatch

    if not os.path.isfile(path):
        raise CLIError(f"--weights {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reading failure becomes one clear error
        raise CLIError(f"--weights {path}: cannot be read as a file of tensors, e.g. torch.save(model.state_dict()) "
                       f"({type(exc).__name__}: {one_line(exc)[:200]})") from None
    state = _state_dict(obj)
    if state is None:
        found = f"a dict with keys {few_keys(sorted(map(str, obj)))}" if isinstance(obj, dict) else type(obj).__name__
        raise CLIError(f"--weights {path}: holds no state_dict (a dict of tensors, or one under "
                       f"{' or '.join(map(repr, STATE_DICT_KEYS))}), but {found}")
    state = _unwrapped(state, list(model.state_dict()))
    problem = state_dict_mismatch(model, state, source="weights")
    if problem:
        raise CLIError(f"--weights {path}: does not fit {what} ({type(model).__name__}): {problem}")
    bad = nonfinite_entries(state)
    if bad:
        raise CLIError(f"--weights {path}: NaN or inf in {few_keys(bad)}; such a model cannot be evaluated")
    model.load_state_dict(state)


def with_normalization(model: nn.Module, mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                       channels: int) -> nn.Module:
    """Sequential(Normalize(mean, std), model): such models expect normalised inputs while the
    attacks work on [0, 1] pixels, so the normalisation goes inside. Neither given: model."""
    from ..nn.normalize import Normalize

    if mean is None and std is None:
        return model
    if mean is None or std is None:
        raise CLIError(f"--{'std' if mean is None else 'mean'}: give --mean and --std together")
    for option, values in (("--mean", mean), ("--std", std)):
        if len(values) not in (1, channels):
            raise CLIError(f"{option}: {len(values)} values for {channels}-channel data; give 1"
                           + (f" or {channels}" if channels > 1 else ""))
    try:
        return nn.Sequential(Normalize(mean, std), model)
    except ValueError as exc:
        raise CLIError(f"--mean/--std: {one_line(exc)}") from exc


def check_fits(model: nn.Module, x: torch.Tensor, num_classes: int, what: str, data: str) -> None:
    """One forward of one test image: a model made for other inputs (channels, size) or with
    too few outputs fails here in one line, not deep inside an attack."""
    try:
        with torch.no_grad():
            out = model(x[:1])
    except Exception as exc:  # noqa: BLE001 - the architecture's own code
        raise CLIError(f"{what} does not take --data {data} images of shape {tuple(x.shape[1:])} "
                       f"({type(exc).__name__}: {one_line(exc)[:200]})") from exc
    logits = out[0] if isinstance(out, (tuple, list)) and out else out
    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != 1 \
            or logits.shape[1] < num_classes:
        raise CLIError(f"{what}: returns {shape} for one --data {data} image; expected logits of shape (1, K) with "
                       f"K >= {num_classes} classes (set K with --num-classes)")


def default_out(label: str) -> str:
    """The default report folder of a --model run, in the current folder: eval-LABEL with each
    run of characters other than letters, digits, ".", "_", "-" made one "-" (a folder name):
    torchvision:resnet18 -> eval-torchvision-resnet18."""
    return "eval-" + re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")
