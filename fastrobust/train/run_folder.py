"""The run folder: no run overwrites another.

A folder holds a run when any of RUN_FILES is in it. A training run writes into a folder only
when the folder holds no run, or when it continues the run the folder holds (resuming from the
folder's own last.pt). Otherwise the run is refused before anything is written, unless
overwrite is asked for: the old folder is then renamed to OUT.old-YYYYmmdd-HHMMSS (never
deleted) and the new run starts in a fresh folder.

Both the trainer (TrainConfig.overwrite) and `fastrobust train` (--overwrite) go through
check_run_folder and prepare_run_folder, so the Python API and the command line agree. The
folder's JSON files are written atomically (write_json_atomically).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import tempfile
from typing import Any, List, Optional

from .config import ConfigError

RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.jsonl")


class RunFolderError(ConfigError):
    """A run refused because its folder holds another run (the message says how to proceed)."""


def run_files(folder: str) -> List[str]:
    """The RUN_FILES present in `folder` (none if it does not exist)."""
    return [name for name in RUN_FILES if os.path.exists(os.path.join(folder, name))]


def check_run_folder(out: str, resume_path: Optional[str], overwrite: bool) -> bool:
    """Whether the run folder `out` must be moved aside first (overwrite and it holds a run).

    RunFolderError when `out` holds a run that this run does not continue (resume_path: the
    checkpoint a resumed run starts from, None for a new run) and overwrite is not set."""
    found = run_files(out)
    if not found:
        return False
    last = os.path.join(out, "last.pt")
    if resume_path is not None:
        if _same_file(resume_path, last):
            return False  # continuing the folder's own run
        if _same_file(os.path.dirname(os.path.abspath(resume_path)), out):
            raise RunFolderError(
                f"resume: {resume_path} is not the last checkpoint of the run in {out}: training from it there "
                "would overwrite the run's last.pt; continue from it into another folder (--out NEW, out=NEW)")
    if overwrite:
        return True
    what = "continue it with --resume (resume=True), " if resume_path is None else ""
    raise RunFolderError(f"{out}: holds a run ({', '.join(found)}); {what}start over with the old run moved aside "
                         f"to {out.rstrip(os.sep)}.old-TIMESTAMP with --overwrite (overwrite=True), or choose "
                         "another folder (--out, out=)")


def prepare_run_folder(out: str, move_aside: bool) -> Optional[str]:
    """Moves the old run aside when asked (returns where it went), creates `out` and checks that
    it can be written (an OSError such as EACCES or EROFS now, not after an epoch of training)."""
    moved = _move_aside(out) if move_aside else None
    writable_folder(out)
    return moved


def writable_folder(folder: str) -> str:
    """Creates `folder` and checks that a file can be written in it (a read-only, full or
    forbidden folder raises its OSError, naming the folder, before any work is done)."""
    os.makedirs(folder, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, folder) from exc
    os.close(fd)
    os.unlink(probe)
    return folder


def _move_aside(out: str) -> str:
    base = f"{os.path.normpath(out)}.old-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    target, n = base, 1
    while os.path.exists(target):
        n += 1
        target = f"{base}-{n}"
    os.rename(out, target)
    return target


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def write_json_atomically(path: str, value: Any) -> None:
    """JSON file written to a temporary name and renamed over `path`: a crash or a full disk
    leaves the previous file, never half of one."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
