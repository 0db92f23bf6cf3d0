"""Training checkpoints: written atomically, verified when read back, with clear errors.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts), so it loads with
torch.load(weights_only=True):

    format      "fastrobust.train.checkpoint"     version   FORMAT_VERSION
    sha256      content_sha256 of every other entry (fastrobust.train.content_hash); version 2 on
    epoch       epochs completed                  step      optimizer steps done
    finished    True once the run ended (all epochs, or stopped by the overfitting guard)
    model       the model's state_dict (unwrapped: no DDP "module." / compile "_orig_mod." prefix)
    optimizer, scheduler, scaler (fp16 GradScaler or None), recipe (Recipe.state_dict())
    rng         one dict per DDP rank: torch CPU / CUDA generator states, the recipe's
                generator, Python's and NumPy's states
    trainer     the trainer's own state (best PGD accuracy so far, the guard's last value, ...)
    config      TrainConfig.to_dict() of the run; model_class: the model's class name
    versions    torch and fastrobust versions that wrote it

Versions: 1 had no sha256 (such files still load, unverified); 2 adds it.

save_checkpoint writes a temporary file in the destination's folder, flushes and fsyncs it and
renames it over the destination (os.replace), so a crash never leaves a half-written
checkpoint under the final name; a failed write (a full disk) raises the OSError of the
failed write, not torch's "[enforce fail at inline_container.cc]". load_checkpoint raises
CheckpointError (a RuntimeError), naming the file, for a missing, truncated, foreign or
corrupted file (content hash mismatch), a newer format and a malformed entry. Whether the
weights are finite is a separate check (check_finite_weights), made by whoever evaluates or
continues from them: load_checkpoint still reads such a file, e.g. to inspect it.
"""
from __future__ import annotations

import errno
import os
import random
import re
import tempfile
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .content_hash import UnhashableContent, content_sha256

FORMAT = "fastrobust.train.checkpoint"
FORMAT_VERSION = 2
HASHED_SINCE = 2  # the first format version that stores the content hash

# The entries load_checkpoint needs, and the type each must have.
REQUIRED = {"epoch": int, "step": int, "model": dict, "optimizer": dict, "scheduler": dict, "rng": list,
            "config": dict}
OPTIONAL = {"fingerprint": dict, "trainer": dict, "recipe": dict, "finished": bool}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: the message names the file and what is wrong."""


class _WriteRecorder:
    """The file torch.save writes through: keeps the first OSError of a write, which torch's
    zip writer turns into "[enforce fail at inline_container.cc] ... unexpected pos" (no errno),
    so that save_checkpoint can raise the real one (ENOSPC, EDQUOT, EIO, ...)."""

    def __init__(self, f):
        self.f = f
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.f.flush()


def _open_for_writing(fd: int):
    """The file object of a new temporary file (a seam for tests that simulate a full disk)."""
    return os.fdopen(fd, "wb")


def save_checkpoint(path: str, state: Dict[str, Any]) -> str:
    """Writes `state` (plus the format keys and its content hash) to `path` atomically; returns
    path. A failed write raises OSError (errno as the system gave it) and leaves any earlier
    file at `path` as it was."""
    payload = {"format": FORMAT, "version": FORMAT_VERSION, **state}
    payload.pop("sha256", None)
    try:
        payload["sha256"] = content_sha256(payload)
    except UnhashableContent as exc:
        raise TypeError(f"checkpoint {path}: cannot save {exc}") from None
    try:
        _write_atomically(path, payload)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, path) from exc  # named after the checkpoint, not its temporary file
    return path


def _write_atomically(path: str, payload: Dict[str, Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        f = _open_for_writing(fd)
        try:
            recorder = _WriteRecorder(f)
            try:
                torch.save(payload, recorder)
            except RuntimeError as exc:
                if recorder.error is not None:
                    raise recorder.error from None
                if "inline_container" in str(exc):
                    raise OSError(errno.EIO, f"writing failed ({_first_line(exc)})") from None
                raise
            f.flush()
            os.fsync(f.fileno())
        finally:
            try:
                f.close()
            except OSError:  # the buffer of a failed write cannot be flushed either
                pass
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
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version!r}, this fastrobust reads versions "
                              f"up to {FORMAT_VERSION}")
    if version >= HASHED_SINCE:
        _verify_content(path, state)
    _check_entries(path, state)
    return state


def _verify_content(path: str, state: Dict[str, Any]) -> None:
    stored = state.pop("sha256", None)
    if not isinstance(stored, str):
        raise CheckpointError(f"checkpoint {path}: corrupted: no content hash (format version {state['version']} "
                              "stores one)")
    try:
        actual = content_sha256(state)
    except UnhashableContent as exc:
        raise CheckpointError(f"checkpoint {path}: corrupted: {exc}") from None
    if actual != stored:
        raise CheckpointError(f"checkpoint {path}: corrupted: content hash mismatch (stored sha256 {stored[:12]}..., "
                              f"content {actual[:12]}...); use another checkpoint (best.pt, a copy) or retrain")


def _check_entries(path: str, state: Dict[str, Any]) -> None:
    """Each entry the trainer and `fastrobust eval` read has its type (a hand-edited or foreign
    file fails here with a clear message instead of deep inside them)."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path}: incomplete, missing {missing}")
    for key, kind in {**REQUIRED, **OPTIONAL}.items():
        value = state.get(key)
        if key in OPTIONAL and value is None:
            continue
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if wrong:
            raise CheckpointError(f"checkpoint {path}: entry {key!r} must be a {kind.__name__}, got "
                                  f"{type(value).__name__}")
    bad = [k for k, v in state["model"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: entry 'model' must map parameter names to tensors, got "
                              f"{bad[0]!r}: {type(state['model'][bad[0]]).__name__}")


def nonfinite_entries(state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point (and complex) tensors of a state_dict holding NaN or inf
    (one host synchronisation for the whole dict)."""
    names = [k for k, v in state_dict.items()
             if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and v.numel()]
    if not names:
        return []
    flags = [torch.isfinite(state_dict[k]).all() for k in names]
    if len({f.device for f in flags}) == 1:
        finite = torch.stack(flags).tolist()
    else:  # a model spread over devices: one synchronisation per tensor
        finite = [bool(f) for f in flags]
    return [k for k, ok in zip(names, finite) if not ok]


def check_finite_weights(path: str, state_dict: Dict[str, torch.Tensor]) -> None:
    """CheckpointError when any weight or buffer of the model is NaN or inf: such a model is
    no result to evaluate and no point to continue training from."""
    bad = nonfinite_entries(state_dict)
    if bad:
        raise CheckpointError(f"checkpoint {path}: the model's weights are not finite (NaN or inf in "
                              f"{few_keys(bad)}); it cannot be evaluated or continued: use an earlier checkpoint "
                              "or retrain (with a lower learning rate)")


def state_dict_mismatch(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint"
                        ) -> Optional[str]:
    """Why state_dict does not load into model, or None when it fits: "missing [...]; unexpected
    [...]; N shape mismatches (e.g. KEY: SOURCE (shape), model (shape))", a few keys of each, so
    that a file made for another architecture says how it differs (load_model_state, fastrobust
    eval --weights)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict)
                    if tuple(own[k].shape) != tuple(getattr(state_dict[k], "shape", ())))
    parts = []
    if missing:
        parts.append(f"missing {few_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected {few_keys(unexpected)}")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: {source} {tuple(state_dict[k].shape)}, "
                     f"model {tuple(own[k].shape)})")
    return "; ".join(parts) or None


def load_model_state(path: str, model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Loads state_dict into model; a checkpoint made for another architecture raises
    CheckpointError listing the missing / unexpected / differently shaped entries."""
    problem = state_dict_mismatch(model, state_dict)
    if problem:
        raise CheckpointError(f"checkpoint {path}: made for another model ({type(model).__name__}): {problem}")
    model.load_state_dict(state_dict)


def few_keys(keys: List[str], n: int = 4) -> str:
    return "[" + ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"


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
