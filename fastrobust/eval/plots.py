"""PNG plots of evaluations, training runs and benchmarks (matplotlib's Agg canvas; pyplot and
the global backend are never touched, so this is safe in notebooks and headless jobs).

    plot_accuracy_vs_eps(check_or_series, path)      robust accuracy vs eps (eps_sweep check data)
    plot_accuracy_vs_steps(check_or_series, path)    accuracy vs attack steps (steps check data)
    plot_loss_curves(curves, path)                   mean attack loss per step (loss_curve check data)
    plot_training_curves(metrics_jsonl, path)        losses, accuracies and lr per epoch of a run
    plot_benchmark_ratios(results_json, path)        bars of t_baseline / t_fused per benchmark case

Series arguments accept a CheckResult, its data dict, or {label: such} for several curves.
Each function returns the path written.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..metrics_log import read_metrics

PathLike = Union[str, Path]


def _figure(figsize=(6.0, 4.0), rows: int = 1, cols: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastrobust.eval.plots needs matplotlib (pip install matplotlib)") from exc
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig, path: PathLike) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    return str(path)


def _data(obj) -> Dict[str, Any]:
    return obj.data if hasattr(obj, "data") and hasattr(obj, "name") else obj


def _series(obj, keys: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """{label: data} from a CheckResult, a data dict, or a mapping of labels to either."""
    data = _data(obj)
    if isinstance(data, Mapping) and all(k in data for k in keys):
        return {"": data}
    if isinstance(data, Mapping):
        return {str(label): _data(v) for label, v in data.items()}
    raise TypeError(f"expected a CheckResult, a dict with keys {list(keys)}, or a dict of them")


def _finite(values) -> List[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f)
    return out


def plot_accuracy_vs_eps(series, path: PathLike, *, title: Optional[str] = None) -> str:
    """Accuracy (%) against eps; data keys "eps" and "accuracy" (fractions)."""
    named = _series(series, ("eps", "accuracy"))
    fig, axes = _figure()
    ax = axes[0][0]
    for label, d in named.items():
        ax.plot(_finite(d["eps"]), [100 * a for a in _finite(d["accuracy"])], marker="o", label=label or None)
    norms = {str(d.get("norm", "linf")) for d in named.values()}
    ax.set_xlabel(f"eps ({', '.join(sorted(norms))})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Robust accuracy vs eps (PGD)")
    if any(named):
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy_vs_steps(series, path: PathLike, *, title: Optional[str] = None) -> str:
    """Accuracy (%) against attack steps; data keys "steps", "accuracy" and optionally
    "restart_steps" / "restart_accuracy" / "restarts" (drawn as a separate marker)."""
    fig, axes = _figure()
    ax = axes[0][0]
    for label, d in _series(series, ("steps", "accuracy")).items():
        line = ax.plot(_finite(d["steps"]), [100 * a for a in _finite(d["accuracy"])], marker="o",
                       label=(label + " " if label else "") + "1 start")
        if d.get("restart_accuracy") is not None:
            ax.plot([float(d["restart_steps"])], [100 * float(d["restart_accuracy"])], marker="*", markersize=12,
                    linestyle="none", color=line[0].get_color(),
                    label=(label + " " if label else "") + f"{d.get('restarts', '?')} restarts")
    ax.set_xlabel("attack steps (0 = random start only)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Robust accuracy vs attack steps (PGD)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_loss_curves(curves, path: PathLike, *, title: Optional[str] = None) -> str:
    """Mean attack loss against the step: a list of values, a CheckResult / data dict with
    "curve", or {label: either}."""
    data = _data(curves)
    if isinstance(data, Mapping) and "curve" in data:
        named = {data.get("loss", "loss"): data["curve"]}
    elif isinstance(data, Mapping):
        named = {str(k): (_data(v)["curve"] if isinstance(_data(v), Mapping) else v) for k, v in data.items()}
    else:
        named = {"loss": list(data)}
    fig, axes = _figure()
    ax = axes[0][0]
    for label, curve in named.items():
        values = _finite(curve)
        ax.plot(range(len(values)), values, marker=".", label=label)
    ax.set_xlabel("attack step")
    ax.set_ylabel("mean attack loss")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Attack loss per step (should rise)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _numeric(v) -> Optional[float]:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(v)
    return None


def plot_training_curves(metrics_path: PathLike, path: Optional[PathLike] = None, *,
                         title: Optional[str] = None) -> str:
    """The curves of a run's metrics.jsonl (one JSON object per epoch): every numeric key whose
    name contains "loss" in one panel, every key ending in "acc" (fractions, drawn as %) in a
    second, "lr" in a third. Missing keys and unreadable lines are skipped; the x axis is
    "epoch" (the line number where absent). Default path: training_curves.png next to the file."""
    if not Path(metrics_path).is_file():
        raise FileNotFoundError(f"no metrics file at {metrics_path}")
    records = read_metrics(metrics_path)
    path = Path(metrics_path).with_name("training_curves.png") if path is None else path
    keys: List[str] = list(dict.fromkeys(k for r in records for k in r))
    groups = {
        "loss": [k for k in keys if "loss" in k],
        "accuracy (%)": [k for k in keys if k.endswith("acc") or k.endswith("accuracy")],
        "learning rate": [k for k in keys if k == "lr"],
    }
    panels = [(name, ks) for name, ks in groups.items() if ks] or [("no metrics", [])]
    fig, axes = _figure((5.0 * len(panels), 4.0), 1, len(panels))
    xs = [(_numeric(r.get("epoch")) if _numeric(r.get("epoch")) is not None else i + 1) for i, r in enumerate(records)]
    for ax, (name, ks) in zip(axes[0], panels):
        for k in ks:
            pts = [(x, _numeric(r.get(k))) for x, r in zip(xs, records)]
            pts = [(x, v) for x, v in pts if v is not None]
            if not pts:
                continue
            scale = 100.0 if name.startswith("accuracy") else 1.0
            ax.plot([p[0] for p in pts], [scale * p[1] for p in pts], marker="o", markersize=3, label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if ks:
            ax.legend(fontsize=7)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.suptitle(title or f"Training curves: {Path(metrics_path).parent.name or Path(metrics_path).name}", fontsize=10)
    return _save(fig, path)


FUSED_NAMES = ("fused", "fastrobust")


def benchmark_ratios(result: Mapping[str, Any], baselines: Optional[Sequence[str]] = ("reference",)
                     ) -> Tuple[List[str], Dict[str, List[Optional[float]]]]:
    """(case names, {baseline: [t_baseline / t_fused per case]}) from a benchmark result
    (fastrobust/bench/harness.py layout: cases[i]["speedup_of_fused"], else the implementations'
    median_s against "fused" / "fastrobust"). baselines=None: every baseline found."""
    cases = list(result.get("cases", []))
    found: List[str] = []
    ratios_per_case = []
    for case in cases:
        ratios = dict(case.get("speedup_of_fused") or {})
        impls = case.get("implementations", {})
        fused = next((impls[f].get("median_s") for f in FUSED_NAMES if f in impls and impls[f].get("median_s")), None)
        for name, entry in impls.items():
            if name in FUSED_NAMES or name in ratios or not isinstance(entry, Mapping):
                continue
            if fused and entry.get("median_s"):
                ratios[name] = entry["median_s"] / fused
        ratios_per_case.append(ratios)
        found.extend(k for k in ratios if k not in found)
    chosen = found if baselines is None else [b for b in baselines if b in found]
    return [str(c.get("case", c.get("label", i))) for i, c in enumerate(cases)], \
        {b: [r.get(b) for r in ratios_per_case] for b in chosen}


def plot_benchmark_ratios(results_path: PathLike, path: Optional[PathLike] = None, *,
                          baselines: Optional[Sequence[str]] = ("reference",), title: Optional[str] = None) -> str:
    """Bars of t_baseline / t_fused (the fused op's speed-up; > 1: fused is faster) for every
    case of one benchmark result file (benchmarks/results/<suite>-<device>.json), on a log axis
    around 1x. baselines: which implementations (default the eager reference; None: all).
    Default path: <results>-ratios.png next to the file."""
    result = json.loads(Path(results_path).read_text())
    path = Path(results_path).with_name(Path(results_path).stem + "-ratios.png") if path is None else path
    names, ratios = benchmark_ratios(result, baselines)
    fig, axes = _figure((max(6.0, 0.6 * len(names) + 2.5), 4.5))
    ax = axes[0][0]
    if not names or not ratios:
        ax.text(0.5, 0.5, "no timed cases", ha="center", va="center", transform=ax.transAxes)
    else:
        width = 0.8 / len(ratios)
        for j, (baseline, ys) in enumerate(ratios.items()):
            xs = [i + (j - (len(ratios) - 1) / 2) * width for i in range(len(names))]
            heights = [(y if y and y > 0 else 1.0) for y in ys]
            bars = ax.bar(xs, [h - 1.0 for h in heights], width, bottom=1.0, label=f"{baseline} / fused")
            ax.bar_label(bars, labels=[f"{y:.2f}" if y else "" for y in ys], fontsize=6, rotation=90, padding=2)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_yscale("log")
        timed = [y for ys in ratios.values() for y in ys if y and y > 0]
        if timed:
            ax.set_ylim(min(0.8, min(timed)) / 1.5, max(1.25, max(timed)) * 2.5)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.legend(fontsize=8)
    ax.set_ylabel("t_baseline / t_fused (> 1: fused faster)")
    meta = result.get("metadata", {})
    ax.set_title(title or f"{result.get('suite', 'benchmark')} on {meta.get('device_name', result.get('device', '?'))}",
                 fontsize=9)
    return _save(fig, path)
