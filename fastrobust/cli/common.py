"""Pieces shared by the `fastrobust` subcommands: the argument parser with one-line errors,
option types, the device check, CPU threads."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
from fractions import Fraction
from typing import Optional, Tuple

import torch

from .errors import CLIError, one_line

AMP_CHOICES = ("none", "bf16", "fp16")
AMP_DTYPES = {"none": None, None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `PROG: error: MESSAGE (see PROG --help)`, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and epilog's line breaks; wider option column."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=34)


# -- option types --------------------------------------------------------------------------

def eps_type(text: str) -> float:
    """A radius as a number or a fraction: 0.15, 8/255 (finite and >= 0: inf and nan are no
    radius, and overflow where the value is scaled)."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.15 or 8/255, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def sigma_list(text: str) -> Tuple[float, ...]:
    """Comma-separated standard deviations > 0, each a number or a fraction: 100/255,0.2."""
    values = []
    for part in (p for p in text.split(",") if p.strip()):
        value = eps_type(part)
        if value == 0:
            raise argparse.ArgumentTypeError(f"standard deviations must be > 0, got {part.strip()!r}")
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers such as 100/255 or 0.2,0.4 (comma-separated), got {text!r}")
    return tuple(values)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def json_object(text: str) -> dict:
    """A JSON object typed on the command line: --data-options '{"n": 8}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"n\": 8}}', got {text!r}")
    return value


def attack_list(text: str) -> Tuple[str, ...]:
    """Comma-separated attack presets or suites (fastrobust.eval.presets); "none": no attack."""
    from ..eval.presets import PRESETS, SUITES, is_attack_name

    if text.strip().lower() == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if not is_attack_name(n)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown attack {', '.join(map(repr, unknown)) or repr(text)}; "
                                         f"choose from {', '.join([*PRESETS, *SUITES])} (comma-separated) or none")
    return names


def checks_type(text: str) -> Tuple[str, ...]:
    """Gradient-masking checks: "none", "default" (masking.DEFAULT_CHECKS) or a comma list."""
    from ..eval.masking import CHECKS, DEFAULT_CHECKS

    key = text.strip().lower()
    if key in ("none", "off", "no"):
        return ()
    if key in ("default", "on", "yes", "all"):
        return tuple(DEFAULT_CHECKS)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown check {', '.join(map(repr, unknown)) or repr(text)}; choose "
                                         f"from none, default, or a comma list of {', '.join(CHECKS)}")
    if "transfer" in names:
        raise argparse.ArgumentTypeError("the transfer check needs a surrogate model; it is not available from "
                                         "the command line (use fastrobust.eval.evaluate)")
    return names


def check_device(name: str) -> torch.device:
    """torch.device for --device ("auto": CUDA when available, else the CPU); CLIError for an
    unparsable name or a CUDA device that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: CUDA is not available (no GPU visible or torch built without CUDA); "
                           "use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise CLIError(f"--device {name}: unsupported device type {device.type!r}; use auto, cpu, cuda or cuda:N")
    return device


@contextlib.contextmanager
def cpu_threads(device: torch.device, threads: Optional[int]):
    """torch.set_num_threads(threads) on the CPU for the block (0 / None: unchanged)."""
    before = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fmt_eps(eps: float) -> str:
    """0.15 -> "0.15", 8/255 -> "8/255 (0.03137)"."""
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6 and round(k) < 64 and abs(eps - round(eps, 3)) > 1e-9:
        return f"{round(k)}/255 ({eps:.4g})"
    return f"{eps:g}"

