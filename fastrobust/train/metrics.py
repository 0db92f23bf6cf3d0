"""What a run reports: one JSON line per epoch (metrics.jsonl), progress bars, and a plot of
the training curves at the end (curves.png, matplotlib's Agg backend).

Accuracies are fractions in [0, 1] (shown as percentages on the bars).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Dict, Iterable, Optional


def _ends_without_newline(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends one JSON object per line to `path` (never truncates it: a resumed run adds its
    epochs after the lines already there); does nothing when disabled (DDP ranks > 0)."""

    def __init__(self, path: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self._checked_end = False

    def append(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        line = json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n"
        if not self._checked_end:  # a line cut by a crash must not swallow the first new one
            self._checked_end = True
            if _ends_without_newline(self.path):
                line = "\n" + line
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def format_postfix(values: Dict[str, Optional[float]]) -> Dict[str, str]:
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        if key.endswith("acc"):
            out[key] = f"{100 * value:.1f}%"
        elif key == "img/s":
            out[key] = f"{value:.0f}"
        else:
            out[key] = f"{value:.4g}"
    return out


class Progress:
    """A tqdm bar per epoch (loss, clean acc, adv acc, images/s); without tqdm, or when not a
    terminal and tqdm is missing, one printed line per epoch. Disabled: silent."""

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tqdm = _tqdm() if enabled else None
        self.bar = None
        self.count = 0
        self.epoch = 0
        self.epochs = 0
        self.t0 = time.perf_counter()

    def start_epoch(self, epoch: int, epochs: int, total: int) -> None:
        self.epoch, self.epochs, self.count = epoch, epochs, 0
        self.t0 = time.perf_counter()
        if self.enabled and self.tqdm is not None:
            self.bar = self.tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", leave=True, dynamic_ncols=True,
                                 file=self.stream)

    def update(self, n: int, values: Dict[str, Optional[float]]) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(format_postfix(values), refresh=False)

    def end_epoch(self, values: Dict[str, Optional[float]]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(format_postfix(values), refresh=True)
            self.bar.close()
            self.bar = None
        else:
            text = " ".join(f"{k}={v}" for k, v in format_postfix(values).items())
            print(f"epoch {self.epoch + 1}/{self.epochs} {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


PLOTS = (
    ("loss", ("train_loss",)),
    ("accuracy", ("train_clean_acc", "train_adv_acc", "test_clean_acc", "test_pgd_acc", "guard_pgd_acc")),
    ("learning rate", ("lr",)),
)


def plot_curves(records: Iterable[Dict[str, Any]], path: str, title: str = "") -> Optional[str]:
    """Loss, accuracies and learning rate against the epoch, saved to `path`; None when
    matplotlib is missing or there is nothing to plot."""
    records = [r for r in records if "epoch" in r]
    if not records:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(PLOTS), figsize=(5 * len(PLOTS), 3.6))
    for ax, (label, keys) in zip(axes, PLOTS):
        for key in keys:
            points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if not points:
                continue
            xs, ys = zip(*points)
            if key.endswith("acc"):
                ys = [100 * v for v in ys]
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label + (" (%)" if label == "accuracy" else ""))
        ax.grid(alpha=0.3)
        if ax.lines and len(ax.lines) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
