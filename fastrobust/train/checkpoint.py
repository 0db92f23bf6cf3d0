"""Training checkpoints: written atomically, read back with clear errors.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts), so it loads with
torch.load(weights_only=True):

    format      "fastrobust.train.checkpoint"     version   FORMAT_VERSION
    epoch       epochs completed                  step      optimizer steps done
    finished    True once the run ended (all epochs, or stopped by the overfitting guard)
    model       the model's state_dict (unwrapped: no DDP "module." / compile "_orig_mod." prefix)
    optimizer, scheduler, scaler (fp16 GradScaler or None), recipe (Recipe.state_dict())
    rng         one dict per DDP rank: torch CPU / CUDA generator states, the recipe's
                generator, Python's and NumPy's states
    trainer     the trainer's own state (best PGD accuracy so far, the guard's last value, ...)
    config      TrainConfig.to_dict() of the run; model_class: the model's class name
    versions    torch and fastrobust versions that wrote it

save_checkpoint writes a temporary file in the destination's folder, flushes and fsyncs it and
renames it over the destination (os.replace), so a crash never leaves a half-written
checkpoint under the final name. load_checkpoint raises CheckpointError (a RuntimeError),
naming the file, for a missing, truncated or foreign file and for a newer format.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
from typing import Any, Dict, List, Optional

import torch
from torch import nn

FORMAT = "fastrobust.train.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: the message names the file and what is wrong."""


def save_checkpoint(path: str, state: Dict[str, Any]) -> str:
    """Writes `state` (plus the format keys) to `path` atomically; returns path."""
    payload = {"format": FORMAT, "version": FORMAT_VERSION, **state}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """The checkpoint dict at `path`, checked to be one of ours in a format this version reads."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path}: the file is empty")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reading failure becomes one clear error
        message = _first_line(exc)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(f"checkpoint {path}: not a fastrobust training checkpoint (it holds Python "
                                  f"objects such as {found.group(1)}, not only tensors and plain containers)"
                                  ) from None
        inner = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        if inner:
            message = f"{type(exc).__name__}: {inner.group(1).strip()}"
        raise CheckpointError(f"checkpoint {path}: cannot be read, the file is truncated, corrupted or not a "
                              f"torch file ({message})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = type(state).__name__ if not isinstance(state, dict) else f"a dict with keys {sorted(state)[:6]}"
        raise CheckpointError(f"checkpoint {path}: not a fastrobust training checkpoint (it holds {what})")
    version = state.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version!r}, this fastrobust reads versions "
                              f"up to {FORMAT_VERSION}")
    missing = [k for k in ("epoch", "step", "model", "optimizer", "scheduler", "rng", "config") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path}: incomplete, missing {missing}")
    return state


def load_model_state(path: str, model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Loads state_dict into model; a checkpoint made for another architecture raises
    CheckpointError listing the missing / unexpected / differently shaped entries."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict)
                    if tuple(own[k].shape) != tuple(getattr(state_dict[k], "shape", ())))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {tuple(state_dict[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise CheckpointError(f"checkpoint {path}: made for another model ({type(model).__name__}): "
                              + "; ".join(parts))
    model.load_state_dict(state_dict)


def _few(keys: List[str], n: int = 4) -> str:
    return "[" + ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"


def check_config(path: str, saved: Dict[str, Any], current: Dict[str, Any]) -> None:
    """A resumed run must have the saved run's trajectory-deciding options (fingerprints)."""
    keys = sorted(set(saved) | set(current))
    diff = [k for k in keys if saved.get(k, "<unset>") != current.get(k, "<unset>")]
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k, '<unset>')!r} vs now {current.get(k, '<unset>')!r}"
                           for k in diff[:4])
        more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
        raise CheckpointError(f"checkpoint {path}: made for another configuration: {detail}{more}")


# -- random number generator states ----------------------------------------------------------

def rng_state(generators: Dict[str, torch.Generator], device: Optional[torch.device] = None) -> Dict[str, Any]:
    """States of torch's global CPU RNG, the CUDA RNG of `device`, the given generators,
    Python's random and NumPy's global RNG, as plain values."""
    state: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    for name, g in generators.items():
        state["gen:" + name] = g.get_state()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return state


def set_rng_state(state: Dict[str, Any], generators: Dict[str, torch.Generator],
                  device: Optional[torch.device] = None) -> None:
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    for name, g in generators.items():
        key = "gen:" + name
        if key in state:
            g.set_state(state[key].to(torch.uint8).cpu())
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def _python_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
