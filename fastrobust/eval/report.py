"""Evaluation reports: report.json (everything, with metadata), report.csv (one row per attack),
report.md (a Markdown table and the gradient-masking checks), and the plots of the checks.

    paths = write_report(report, "out/eval")   # {"json": ..., "csv": ..., "md": ..., "accuracy_vs_eps": ...}
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..dtypes import torch_dtype_name
from ..info import device_name

CSV_COLUMNS = ["model", "data", "eps", "norm", "seed", "n", "attack", "kind", "points_attacked", "successes",
               "robust_accuracy", "accuracy_alone", "hypocritical_risk", "time_s", "forwards", "backwards",
               "images_per_s", "nonfinite"]


def git_info(path: Optional[Path] = None) -> Dict[str, Any]:
    """{"commit", "dirty"} of the git checkout that holds fastrobust (None when it is not in one,
    e.g. installed into site-packages)."""
    root = Path(path) if path is not None else Path(__file__).resolve().parent.parent.parent
    info: Dict[str, Any] = {"commit": None, "dirty": None}
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
            return info
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10)
        if status.returncode == 0:
            info["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def collect_metadata(model: nn.Module, *, model_name: Optional[str] = None, data: Optional[str] = None,
                     attacks: Sequence[str] = (), eps: Optional[float] = None, norm: Optional[str] = None,
                     seed: Optional[int] = None, n: Optional[int] = None, device=None, **extra) -> Dict[str, Any]:
    """Model, data, attacks, threat model, seed, versions (torch, fastrobust, python), git
    commit, device and time of an evaluation; extra keyword arguments are added as given."""
    import fastrobust
    device = torch.device(device) if device is not None else torch.device("cpu")
    cls = type(model)
    meta: Dict[str, Any] = {
        "model": model_name or cls.__name__,
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "data": data,
        "attacks": list(attacks),
        "eps": eps,
        "norm": norm,
        "seed": seed,
        "n": n,
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "fastrobust": getattr(fastrobust, "__version__", None),
        "fastrobust_extension": bool(getattr(fastrobust, "HAS_EXT", False)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    git = git_info()
    meta["git_commit"], meta["git_dirty"] = git["commit"], git["dirty"]
    for k, v in extra.items():
        meta[k] = torch_dtype_name(v) if isinstance(v, torch.dtype) else v
    return meta


def csv_rows(report) -> List[Dict[str, Any]]:
    """clean, one row per attack, then overall."""
    meta = report.metadata
    base = {"model": meta.get("model"), "data": meta.get("data"), "eps": report.eps, "norm": report.norm,
            "seed": report.seed, "n": report.n}
    rows = [dict(base, attack="clean", kind="clean", points_attacked=report.n, robust_accuracy=report.clean_accuracy,
                 time_s=report.clean_time_s)]
    for a in report.attacks:
        d = a.to_dict()
        rows.append(dict(base, attack=d.pop("name"), **{k: v for k, v in d.items() if k in CSV_COLUMNS}))
    rows.append(dict(base, attack="overall", kind="overall", robust_accuracy=report.robust_accuracy,
                     hypocritical_risk=report.hypocritical_risk, time_s=report.total_time_s))
    return rows


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _num(v: Optional[float], fmt: str = "{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def markdown(report, plots: Optional[Dict[str, str]] = None) -> str:
    """The report as Markdown: metadata, the cascade table, the hypocritical risk, the noise
    accuracy, the checks."""
    m = report.metadata
    lines = [f"# Robustness evaluation: {m.get('model', 'model')}", ""]
    commit = m.get("git_commit")
    facts = [
        ("model", f"{m.get('model')} (`{m.get('model_class')}`, {m.get('model_parameters'):,} parameters)"
         if m.get("model_parameters") is not None else m.get("model")),
        ("data", f"{m.get('data')}, first {report.n} points"),
        ("threat model", f"{report.norm}, eps = {report.eps:.6g}"),
        ("attacks", ", ".join(m.get("attacks", [])) + (" (cascade)" if report.cascade else " (each on all points)")),
        ("seed", report.seed),
        ("device", f"{m.get('device')} ({m.get('device_name')})"),
        ("versions", f"torch {m.get('torch')}, fastrobust {m.get('fastrobust')}, python {m.get('python')}"),
        ("commit", "unknown" if commit is None else f"`{commit}`" + (" (with local changes)" if m.get("git_dirty") else "")),
        ("date", m.get("timestamp")),
    ]
    lines += [f"- **{k}**: {v}" for k, v in facts] + [""]
    alone = not report.cascade
    header = ["attack", "robust acc. (%)"] + (["alone (%)"] if alone else []) + \
        ["attacked", "broken", "time (s)", "forwards", "backwards", "images/s"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines.append("| clean | " + " | ".join([_pct(report.clean_accuracy)] + (["–"] if alone else []) +
                                          [str(report.n), "–", _num(report.clean_time_s), "–", "–", "–"]) + " |")
    for a in report.attacks:
        if a.kind != "cascade":
            continue
        cells = [_pct(a.robust_accuracy)] + ([_pct(a.accuracy_alone)] if alone else []) + \
            [str(a.points_attacked), str(a.successes), _num(a.time_s), str(a.forwards), str(a.backwards),
             _num(a.images_per_s, "{:.0f}")]
        lines.append(f"| {a.name} | " + " | ".join(cells) + " |")
    lines.append(f"| **overall** | **{_pct(report.robust_accuracy)}** | " + " | ".join(
        (["–"] if alone else []) + ["–", "–", _num(report.total_time_s), "–", "–", "–"]) + " |")
    lines.append("")
    for a in report.attacks:
        if a.nonfinite:
            lines.append(f"**Non-finite losses** ({a.name}): on {a.nonfinite} of {a.points_attacked} attacked points "
                         f"the model gave a NaN or infinite loss at some iterate; those iterates count neither as "
                         f"breaks nor as best points, so the model may be less robust there than reported.")
            lines.append("")
    for a in report.attacks:
        if a.kind == "hypocritical":
            risk = "n/a (no misclassified points)" if a.hypocritical_risk is None else f"{_pct(a.hypocritical_risk)}%"
            lines.append(f"**Hypocritical risk** ({a.name}): {risk}: {a.successes} of {a.points_attacked} "
                         f"misclassified points made correct ({_num(a.time_s)} s).")
            lines.append("")
    if getattr(report, "noise", None):
        lines += ["## Gaussian noise", "", "Accuracy on clip(x + N(0, sigma^2)), not part of the robust accuracy.", "",
                  "| sigma | accuracy (%) | of the clean-correct (%) | time (s) |", "|---:|---:|---:|---:|"]
        lines += [f"| {r.sigma:.4g} | {_pct(r.accuracy)} | {_pct(r.accuracy_of_clean_correct)} | {_num(r.time_s)} |"
                  for r in report.noise]
        lines.append("")
    if report.checks:
        lines += ["## Gradient-masking checks", ""]
        for c in report.checks:
            status = "skipped" if c.passed is None else ("ok" if c.passed else "**WARNING**")
            lines.append(f"- {c.name}: {status}: {c.message}")
        if report.warnings:
            lines += ["", "Some checks fired: the robust accuracy above may overestimate the true robustness "
                          "(try BPDA / EOT / transfer attacks)."]
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{k}]({os.path.basename(v)})" for k, v in plots.items()] + [""]
    return "\n".join(lines)


def write_report(report, out_dir, *, plots: bool = True, samples: bool = False) -> Dict[str, str]:
    """Writes report.json (report.to_dict(samples)), report.csv, report.md and, when the checks
    hold the data, accuracy_vs_eps.png, accuracy_vs_steps.png and loss_curves.png. Returns
    {kind: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: Dict[str, str] = {}
    figures: Dict[str, str] = {}
    if plots:
        from . import plots as _plots
        for check in report.checks:
            if check.passed is None:
                continue
            if check.name == "eps_sweep":
                figures["accuracy_vs_eps"] = _plots.plot_accuracy_vs_eps(check, out / "accuracy_vs_eps.png")
            elif check.name == "steps":
                figures["accuracy_vs_steps"] = _plots.plot_accuracy_vs_steps(check, out / "accuracy_vs_steps.png")
            elif check.name == "loss_curve":
                figures["loss_curves"] = _plots.plot_loss_curves(check, out / "loss_curves.png")
    json_path = out / "report.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.to_dict(samples=samples), indent=1, allow_nan=True) + "\n")
    tmp.replace(json_path)
    written["json"] = str(json_path)
    csv_path = out / "report.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(report))
    written["csv"] = str(csv_path)
    md_path = out / "report.md"
    md_path.write_text(markdown(report, figures))
    written["md"] = str(md_path)
    written.update(figures)
    return written
