"""Writes OUT/gpu_check.json, the one report of benchmarks/gpu_check.sh.

It gathers the machine (GPU, driver, torch, CUDA), the code (git commit, a digest of the
sources), each step's status and duration from steps.tsv (with the end of the log of every
step that did not pass), each test's outcome from junit.xml, the compute-sanitizer error
counts from their logs, and the benchmark results (<suite>-cuda.json) themselves.

    python benchmarks/gpu_report.py --out benchmarks/results [--steps OUT/steps.tsv]
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
SANITIZER_STEPS = ("memcheck", "racecheck", "synccheck")
SOURCE_DIRS = ("csrc", "fastrobust", "tests", "benchmarks")
SOURCE_SUFFIXES = {".py", ".h", ".cuh", ".cu", ".cpp", ".sh", ".txt", ".toml"}
LOG_TAIL_LINES = 40


def command_output(args: List[str], timeout: float = 20) -> Optional[str]:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def gpu_info() -> List[dict]:
    text = command_output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                           "--format=csv,noheader"])
    if not text:
        return []
    return [dict(zip(("name", "driver", "memory"), (f.strip() for f in line.split(","))))
            for line in text.splitlines()]


def torch_info() -> dict:
    try:
        import torch
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    info = {"version": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version())
    return info


def build_info() -> Optional[dict]:
    """fastrobust/_build_info.py, read from its file so that a broken _C cannot stop the report."""
    path = REPO_ROOT / "fastrobust" / "_build_info.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("_fr_build_info", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return getattr(module, "BUILD_INFO", None)


def source_digest() -> str:
    """sha256 of the source files: names the code that was tested even without a commit."""
    h = hashlib.sha256()
    for top in SOURCE_DIRS:
        for path in sorted((REPO_ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in SOURCE_SUFFIXES and "results" not in path.parts:
                h.update(str(path.relative_to(REPO_ROOT)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def log_tail(path: Path) -> Optional[str]:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    return "\n".join(lines[-LOG_TAIL_LINES:])


def read_steps(steps_file: Path, out_dir: Path) -> List[dict]:
    """The rows of steps.tsv (name, status, rc, seconds, log); log paths relative to out_dir."""
    steps = []
    if not steps_file.exists():
        return steps
    for line in steps_file.read_text().splitlines():
        name, status, rc, seconds, log = (line.split("\t") + [""] * 5)[:5]
        log_path = Path(log) if log not in ("", "-") else None
        step = {"name": name, "status": status, "rc": None if rc in ("", "-") else int(rc),
                "seconds": int(seconds) if seconds.isdigit() else None,
                "log": _relative(log_path, out_dir) if log_path else None}
        if status not in ("passed", "skipped_by_request") and log_path:
            step["log_tail"] = log_tail(log_path)
        steps.append(step)
    return steps


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def junit_outcomes(path: Path) -> Optional[dict]:
    """Counts and per-test outcomes (passed, failed, error, skipped) from pytest's junit xml."""
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": f"unreadable junit xml: {exc}"}
    tests = []
    for case in root.iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (child.get("message") or child.text or "")[:1000]
                break
        tests.append({"id": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "time_s": float(case.get("time") or 0), "message": message})
    counts: Dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return {"counts": counts, "total": len(tests), "tests": tests}


def sanitizer_counts(log: Path) -> Optional[dict]:
    """Error counts from a compute-sanitizer log: 'ERROR SUMMARY: N errors' (memcheck,
    synccheck) or 'RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)'."""
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    counts: dict = {"errors": None}
    m = re.search(r"ERROR SUMMARY:\s*(\d+) error", text)
    if m:
        counts["errors"] = int(m.group(1))
    m = re.search(r"RACECHECK SUMMARY:\s*(\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
    if m:
        counts.update(hazards=int(m.group(1)), errors=int(m.group(2)), warnings=int(m.group(3)))
    counts["smoke_mismatches"] = smoke_mismatches(log)
    return counts


def smoke_mismatches(log: Path, limit: int = 50) -> Optional[List[str]]:
    """The MISMATCH lines gpu_smoke.py printed into a log (None: no log)."""
    if not log.exists():
        return None
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if line.startswith("MISMATCH")][:limit]


def benchmark_results(out_dir: Path) -> Dict[str, dict]:
    results = {}
    for path in sorted(out_dir.glob("*-cuda.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            results[path.stem] = {"error": f"{path}: {exc}"}
    return results


def benchmark_summary(results: Dict[str, dict]) -> List[dict]:
    """One line per case: the speed-ups of the fused op and its bandwidth."""
    rows = []
    for run in results.values():
        for case in run.get("cases", []):
            rows.append({"suite": run.get("suite"), "case": case.get("case"),
                         "fused_us": _us(case.get("implementations", {}).get("fused", {}).get("median_s")),
                         "speedup_of_fused": case.get("speedup_of_fused"),
                         "fused_gbps": case.get("fused_gbps"),
                         "fraction_of_copy_bandwidth": case.get("fused_fraction_of_copy_bandwidth"),
                         "error": case.get("error")})
    return rows


def _us(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else seconds * 1e6


def build_report(out_dir: Path, steps_file: Path) -> dict:
    steps = read_steps(steps_file, out_dir)
    logs = out_dir / "logs"
    benchmarks = benchmark_results(out_dir)
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "passed": bool(steps) and all(s["status"] in ("passed", "skipped_by_request") for s in steps),
        # A copy of the working tree sent to a GPU machine may carry no .git, or a stale one: the
        # command names the commit in the environment.
        "git_commit": os.environ.get("FASTROBUST_GIT_COMMIT") or command_output(["git", "rev-parse", "HEAD"]),
        "source_sha256": source_digest(),
        "host": {"python": platform.python_version(), "platform": platform.platform()},
        "gpus": gpu_info(),
        "torch": torch_info(),
        "nvcc": command_output(["nvcc", "--version"]),
        "fastrobust_build": build_info(),
        "steps": steps,
        "tests": junit_outcomes(out_dir / "junit.xml"),
        "smoke_mismatches": smoke_mismatches(logs / "smoke.log"),
        "sanitizers": {tool: sanitizer_counts(logs / f"{tool}.log") for tool in SANITIZER_STEPS},
        "benchmark_summary": benchmark_summary(benchmarks),
        "benchmarks": benchmarks,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--steps", type=Path, default=None, help="steps.tsv (default: OUT/steps.tsv)")
    args = p.parse_args(argv)
    report = build_report(args.out, args.steps or args.out / "steps.tsv")
    path = args.out / "gpu_check.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"report: {path} (passed: {report['passed']})")
    for s in report["steps"]:
        print(f"  {s['name']:<14} {s['status']:<20} {s['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
