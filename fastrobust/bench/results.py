"""A suite's result record: its metadata, the run over every case (harness.run_case) with the
record rewritten after each case, and its outputs: JSON, CSV, a bar plot of the speed-ups and a
text table.

Results go to <out>/<suite>-<device>.json and .csv (rewritten after every case, so a run cut
short still leaves what it measured; "complete" in the JSON says whether it finished) and a
bar plot <suite>-<device>.png.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from fastrobust.info import device_name

from .harness import (FUSED, SEED, TOLERANCES, Options, Suite, device_type, dtype_name, error_text,
                      measure_copy_bandwidth, run_case)

# a source checkout's root when the package runs from one (git_commit asks git there; an
# installed wheel has no repository, and the commit is then None)
REPO_ROOT = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- metadata


def git_commit() -> Optional[str]:
    """HEAD, or FASTROBUST_GIT_COMMIT where it is set: a copy of the tree sent to a GPU machine
    may carry no .git, or one older than its files."""
    if os.environ.get("FASTROBUST_GIT_COMMIT"):
        return os.environ["FASTROBUST_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def fastrobust_build_info() -> Optional[dict]:
    try:
        from fastrobust._build_info import BUILD_INFO
        import fastrobust
    except Exception:
        return None
    return dict(BUILD_INFO, has_ext=fastrobust.HAS_EXT, with_cuda=fastrobust.WITH_CUDA)


def collect_metadata(device: str, options: Options) -> dict:
    meta = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "fastrobust_build": fastrobust_build_info(),
        "git_commit": git_commit(),
        "argv": options.argv,
        "seed": SEED,
        "min_run_time_s": options.run_time_for(device),
        "timing_rounds": options.timing_rounds(),
        "quick": options.quick,
        "compile": options.compile,
    }
    if device_type(device) == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        meta["cuda_capability"] = f"{props.major}.{props.minor}"
        meta["cudnn"] = torch.backends.cudnn.version()
    return meta


# ----------------------------------------------------------------------------- the suite


def run_suite(suite: Suite, device: str, options: Options) -> dict:
    copy_gbps = measure_copy_bandwidth(device)
    result = {"suite": suite.name, "description": suite.description, "device": device,
              "metadata": collect_metadata(device, options), "copy_bandwidth_gbps": copy_gbps,
              "tolerances": {dtype_name(d): t for d, t in TOLERANCES.items()},
              "complete": False, "cases": []}
    for i, case in enumerate(suite.cases, 1):
        if options.verbose:
            print(f"[{suite.name} {i}/{len(suite.cases)}] {case.name}", file=sys.stderr, flush=True)
        result["cases"].append(run_case(suite, case, options, copy_gbps))
        write_json(result, output_path(options.out_dir, suite.name, device, "json", options.quick))
        write_csv(result, output_path(options.out_dir, suite.name, device, "csv", options.quick))
    result["complete"] = True
    return result


def output_path(out_dir: Path, suite: str, device: str, ext: str, quick: bool = False) -> Path:
    # Quick (smoke) runs get their own files so that they never replace a full run's results.
    return Path(out_dir) / f"{suite}-{device_type(device)}{'-quick' if quick else ''}.{ext}"


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str, allow_nan=True) + "\n")
    tmp.replace(path)  # a reader never sees half a file


CSV_COLUMNS = ["suite", "device", "device_name", "case", "label", "dtype", "mode", "shapes",
               "impl", "correct", "max_abs_err", "err_over_tol", "median_s", "iqr_s", "blocks",
               "time_over_fused", "fused_gbps", "fused_fraction_of_copy_bandwidth",
               "saved_activation_bytes", "error"]


def csv_rows(result: dict):
    """One row per (case, implementation); a case whose oracle failed gets one row alone."""
    for case in result["cases"]:
        base = {"suite": result["suite"], "device": result["device"],
                "device_name": result["metadata"]["device_name"], "case": case["case"],
                "label": case["label"], "dtype": case["dtype"], "mode": case["mode"],
                "shapes": " ".join(f"{n}={'x'.join(map(str, s))}" for n, s in case["shapes"].items())}
        if not case["implementations"]:
            yield dict(base, error=case.get("error"))
        for impl, entry in case["implementations"].items():
            yield dict(base, **implementation_columns(case, impl, entry))


def implementation_columns(case: dict, impl: str, e: dict) -> dict:
    fused = impl == FUSED
    ratio = case["speedup_of_fused"].get(impl)
    if fused and e.get("median_s"):
        ratio = 1.0
    return {"impl": impl, "correct": e.get("correct"), "max_abs_err": e.get("max_abs_err"),
            "err_over_tol": e.get("err_over_tol"), "median_s": e.get("median_s"),
            "iqr_s": e.get("iqr_s"), "blocks": e.get("blocks"), "time_over_fused": ratio,
            "fused_gbps": case["fused_gbps"] if fused else None,
            "fused_fraction_of_copy_bandwidth": case["fused_fraction_of_copy_bandwidth"] if fused else None,
            "saved_activation_bytes": e.get("saved_activation_bytes"),
            "error": e.get("error") or e.get("mismatch")}


def write_csv(result: dict, path: Path, columns: Sequence[str] = CSV_COLUMNS, rows=csv_rows) -> None:
    """One CSV row per case and implementation; a suite with other columns passes its own
    `columns` and `rows(result)`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows(result))


def baseline_names(result: dict) -> List[str]:
    """The implementations compared with the fused one, in the order they ran."""
    return list(dict.fromkeys(b for c in result["cases"] for b in c.get("speedup_of_fused", {})))


def plot_speedups(result: dict, path: Path) -> Optional[str]:
    """Grouped bars of t_baseline / t_fused per case. Returns why no plot was made, if so."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except Exception as exc:
        return f"no plot: matplotlib unavailable ({error_text(exc, 200)})"
    cases = result["cases"]
    baselines = baseline_names(result)
    if not cases or not baselines:
        return "no plot: nothing was timed"
    width = 0.8 / len(baselines)
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(cases) + 2), 5))
    for j, baseline in enumerate(baselines):
        xs = [i + (j - (len(baselines) - 1) / 2) * width for i in range(len(cases))]
        ys = [c.get("speedup_of_fused", {}).get(baseline) for c in cases]
        # Bars grow from 1x, up where the fused op is faster and down where it is slower.
        bars = ax.bar(xs, [(y or 1.0) - 1.0 for y in ys], width, bottom=1.0, label=f"{baseline} / fused")
        ax.bar_label(bars, labels=[f"{y:.2f}" if y else "n/a" for y in ys], fontsize=6, rotation=90, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    # Speed-ups are ratios: a log axis shows 0.5x and 2x equally far from 1.
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}x"))
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c["case"] for c in cases], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("speed-up of fused (time ratio, higher is better)")
    meta = result["metadata"]
    ax.set_title(f"{result['suite']} on {meta['device_name']} (torch {meta['torch']})\n"
                 f"{result.get('description', '')}", fontsize=9)
    timed = [y for c in cases for y in c.get("speedup_of_fused", {}).values() if y]
    if timed:
        ax.set_ylim(min(0.8, min(timed)) / 1.5, max(1.25, max(timed)) * 2.5)  # room for labels
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_results(result: dict, out_dir: Path) -> Dict[str, str]:
    """Writes JSON, CSV and PNG; returns {kind: path or note}."""
    quick = bool(result["metadata"].get("quick"))
    paths = {ext: output_path(out_dir, result["suite"], result["device"], ext, quick)
             for ext in ("json", "csv", "png")}
    write_json(result, paths["json"])
    write_csv(result, paths["csv"])
    note = plot_speedups(result, paths["png"])
    written = {ext: str(p) for ext, p in paths.items()}
    if note:
        written["png"] = note
    return written


# ----------------------------------------------------------------------------- table


def _fmt(x: Optional[float], spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if x is None else f"{x * scale:{spec}}{suffix}"


def check_summary(case: dict) -> str:
    """'ok', 'ERROR' (no oracle) or 'BAD:' and the implementations that failed or raised."""
    if case.get("error"):
        return "ERROR"
    bad = [n for n, e in case["implementations"].items() if e.get("error") or not e.get("correct", True)]
    return "ok" if not bad else "BAD:" + ",".join(bad)


def table_row(case: dict, baselines: List[str], cuda: bool) -> List[str]:
    ratios = case.get("speedup_of_fused", {})
    saved = case.get("saved_activation_bytes") or {}
    row = [case["case"], check_summary(case)]
    row += [_fmt(ratios.get(b), ".2f", suffix="x") for b in baselines]
    row.append(_fmt(saved.get("fused_to_reference"), ".2f"))
    if cuda:
        impls = case["implementations"]
        row += [_fmt(impls.get(n, {}).get("median_s"), ".1f", scale=1e6) for n in [FUSED] + baselines]
        row.append(_fmt(case.get("fused_gbps"), ".0f"))
        row.append(_fmt(case.get("fused_fraction_of_copy_bandwidth"), ".0f", scale=100, suffix="%"))
    return row


def align(rows: List[List[str]]) -> List[str]:
    """First column left-aligned, the others right-aligned, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def problem_notes(result: dict) -> List[str]:
    notes = [f"  {c['case']}: {c['error']}" for c in result["cases"] if c.get("error")]
    for c in result["cases"]:
        for n, e in c["implementations"].items():
            where = f"  {c['case']} [{n}]"
            if e.get("error"):
                notes.append(f"{where}: {e['error'].splitlines()[0][:300]}")
            elif e.get("mismatch"):
                notes.append(f"{where}: WRONG, {e['mismatch']}")
            elif e.get("correct") is False:
                notes.append(f"{where}: WRONG in {','.join(e['failed_tensors'])}: max abs err "
                             f"{e['max_abs_err']:.3g} ({e['err_over_tol']:.3g}x tolerance {e['tol']:g})")
    return notes


def format_table(result: dict) -> str:
    """A text table: ratios always; absolute times and GB/s only on CUDA (times on shared
    CPU machines are noise; the JSON keeps them anyway)."""
    cuda = device_type(result["device"]) == "cuda"
    baselines = baseline_names(result)
    header = ["case", "check"] + [f"{b}/fused" for b in baselines] + ["saved fused/ref"]
    if cuda:
        header += ["fused us"] + [f"{b} us" for b in baselines] + ["GB/s", "of copy"]
    title = f"{result['suite']} on {result['metadata']['device_name']} ({result['device']})"
    if result.get("copy_bandwidth_gbps"):
        title += f", copy bandwidth {result['copy_bandwidth_gbps']:.0f} GB/s"
    legend = ("x/fused = time of x over time of the fused op (>1: fused is faster); "
              "saved = activation bytes kept for backward, fused over reference")
    rows = [header] + [table_row(c, baselines, cuda) for c in result["cases"]]
    return "\n".join([title] + align(rows) + [legend] + problem_notes(result))
