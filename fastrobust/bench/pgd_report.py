"""Output of the PGD suite: JSON (results.write_json), a CSV of its own columns, the
harness's bar plot (t_impl / t_fastrobust per case) and a text table."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from . import harness, results

MAIN = "fastrobust"
CSV_COLUMNS = ["suite", "device", "device_name", "case", "kind", "dtype", "model", "batch", "rows", "impl",
               "status", "robust_accuracy", "linf_distance", "max_abs_err", "median_s", "iqr_s", "blocks",
               "images_per_s", "time_over_fastrobust", "speedup_over_reference", "overhead_over_floor_pct",
               "fused_gbps", "note"]


def status(entry: dict) -> str:
    """ok (checked and timed), skipped (not available), ERROR (raised) or WRONG (failed its check)."""
    if entry.get("skipped"):
        return "skipped"
    if entry.get("error"):
        return "ERROR"
    return "ok" if entry.get("correct") else "WRONG"


def note(entry: dict) -> Optional[str]:
    problems = "; ".join(entry.get("problems") or []) or None
    return entry.get("skipped") or entry.get("error") or problems


def failures(result: dict) -> List[str]:
    """'case [impl]: why' for every case or implementation that raised or failed its check."""
    out = [f"{c['case']}: {c['error']}" for c in result["cases"] if c.get("error")]
    for c in result["cases"]:
        for impl, e in c["implementations"].items():
            if status(e) in ("ERROR", "WRONG"):
                out.append(f"{c['case']} [{impl}]: {status(e)} {note(e) or ''}".rstrip())
    return out


def csv_rows(result: dict):
    for c in result["cases"]:
        base = {"suite": result["suite"], "device": result["device"],
                "device_name": result["metadata"]["device_name"],
                **{k: c.get(k) for k in ("case", "kind", "dtype", "model", "batch", "rows")}}
        if c.get("error"):
            yield dict(base, status="ERROR", note=c["error"])
        for impl, e in c["implementations"].items():
            yield dict(base, impl=impl, status=status(e), note=note(e),
                       time_over_fastrobust=1.0 if impl == MAIN and e.get("median_s") else c["speedup_of_fused"].get(impl),
                       speedup_over_reference=c["speedup_over_reference"].get(impl),
                       overhead_over_floor_pct=c["overhead_over_floor_pct"].get(impl),
                       fused_gbps=c.get("fused_gbps") if impl == MAIN else None,
                       **{k: e.get(k) for k in ("robust_accuracy", "linf_distance", "max_abs_err", "median_s",
                                                "iqr_s", "blocks", "images_per_s")})


def paths(result: dict, out_dir: Path, quick: bool) -> Dict[str, Path]:
    return {ext: results.output_path(out_dir, result["suite"], result["device"], ext, quick)
            for ext in ("json", "csv", "png")}


def write_data(result: dict, out_dir: Path, quick: bool, columns=CSV_COLUMNS, rows=csv_rows) -> None:
    """JSON and CSV, rewritten after every case so that a run cut short keeps what it measured
    (columns and rows: the CSV layout of a suite that reuses this report, e.g. bench_train)."""
    p = paths(result, out_dir, quick)
    results.write_json(result, p["json"])
    results.write_csv(result, p["csv"], columns, rows)


def write_results(result: dict, out_dir: Path, quick: bool, columns=CSV_COLUMNS, rows=csv_rows) -> Dict[str, str]:
    """JSON, CSV and PNG; returns {kind: path, or why there is no plot}. Cases without
    speedups (skipped, or their fastrobust run missing) are left out of the plot: they would be
    empty groups of bars."""
    write_data(result, out_dir, quick, columns, rows)
    p = paths(result, out_dir, quick)
    written = {ext: str(path) for ext, path in p.items()}
    timed = dict(result, cases=[c for c in result["cases"] if c.get("speedup_of_fused")])
    why_not = results.plot_speedups(timed, p["png"])
    if why_not:
        written["png"] = why_not
    return written


def _fmt(x: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def format_table(result: dict) -> str:
    """One row per (case, implementation): check, robust accuracy, time over fastrobust's
    (> 1: fastrobust is faster), overhead over the gradient floor; absolute times and images/s
    on CUDA only (times on shared CPU machines are noise; the JSON keeps them)."""
    cuda = harness.device_type(result["device"]) == "cuda"
    header = ["case", "impl", "check", "robust acc", "t/t_fastrobust", "over floor"]
    if cuda:
        header += ["ms", "images/s"]
    rows = [header]
    for c in result["cases"]:
        if c.get("error"):
            rows.append([c["case"], "-", "ERROR", "-", "-", "-"] + (["-", "-"] if cuda else []))
        for impl, e in c["implementations"].items():
            ratio = 1.0 if impl == MAIN and e.get("median_s") else c["speedup_of_fused"].get(impl)
            row = [c["case"], impl, status(e), _fmt(e.get("robust_accuracy"), ".3f"), _fmt(ratio, ".2f", "x"),
                   _fmt(c["overhead_over_floor_pct"].get(impl), "+.1f", "%")]
            if cuda:
                seconds = e.get("median_s")
                row += [_fmt(None if seconds is None else 1e3 * seconds, ".2f"), _fmt(e.get("images_per_s"), ".0f")]
            rows.append(row)
    meta = result["metadata"]
    title = f"{result['suite']} on {meta['device_name']} ({result['device']}); pgd ops: " + ", ".join(
        f"{op} {backend}" for op, backend in meta["pgd_ops_backend"].items())
    legend = ("t/t_fastrobust = time over fastrobust's in the same case (> 1: fastrobust is faster); "
              "over floor = time over 10 x (forward + input gradient) alone")
    skipped = [f"  {c['case']} [{i}] skipped: {e['skipped'].splitlines()[0][:200]}"
               for c in result["cases"] for i, e in c["implementations"].items() if e.get("skipped")]
    return "\n".join([title] + results.align(rows) + [legend] + skipped + ["  " + f for f in failures(result)])
