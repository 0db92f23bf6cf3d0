"""The README's performance tables, printed from the committed result files:

    python -m benchmarks.perf_summary [RESULTS_DIR]

(`python -m benchmarks.run` rewrites benchmarks/results/summary.md with it whenever it writes there.)

- "Modelled (H100)": per op call of SUITE-h100-model.json (fastrobust.cost_model: a model of
  the CUDA kernels run through the CPU emulator, never a measurement): modelled bytes over
  the minimal bytes, the worst sector efficiency and bank-conflict factor among its kernels,
  and the roofline bound of the baseline over ours (> 1: ours is modelled faster); and which
  path nlm_gaussian's backend="auto" takes at the NLM shapes, by the same model.
- "Measured (CPU)" and "Measured (GPU)": SUITE-cpu.json and SUITE-cuda.json, time ratios measured in one interleaved run on the machine
  named in its metadata (> 1: fastrobust is faster), the PGD engine's time over the
  forward + input-gradient floor, and the attacks against the official AutoAttack code and
  torchattacks (robust accuracy and time ratios).
Files that are missing are skipped, with a line saying so.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, List, Optional

DEFAULT_DIR = Path(__file__).resolve().parent / "results"
MODEL_SUITES = ("sparta", "cifs", "pgd", "nlm")
CPU_SUITES = ("sparta", "cifs", "nlm")


def _table(header: List[str], rows: Iterable[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}x"


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def model_rows(records: List[dict]) -> List[List[str]]:
    """One row per op call: its bytes and counted FLOPs against the minimum ("-" where the op
    has no minimal FLOPs: element-wise), its kernels' worst sector efficiency and conflict
    factor, its modelled time and the baseline's over it."""
    rows = []
    kernels: List[dict] = []
    for r in records:
        if r["kernel"] != "(op)":
            kernels.append(r)
            continue
        efficiencies = [k["sector_efficiency"] for k in kernels if k["sector_efficiency"] is not None]
        conflicts = [k["bank_conflict_factor"] for k in kernels if k["bank_conflict_factor"] is not None]
        baseline = r.get("baseline_modeled_us")
        rows.append([r["case"], _ratio(r["bytes"] / r["min_bytes"] if r["min_bytes"] else None),
                     _ratio(r["flops"] / r["min_flops"] if r.get("min_flops") else None),
                     _percent(min(efficiencies) if efficiencies else None),
                     f"{max(conflicts):.2f}" if conflicts else "-",
                     f"{r['modeled_us']:.2f}",
                     _ratio(baseline / r["modeled_us"] if baseline and r["modeled_us"] else None)])
        kernels = []
    return rows


def _suite_parts(directory: Path, suites: Iterable[str], file_name: str, render) -> List[str]:
    """render(suite, data) for each suite's JSON file (file_name with {suite}), or a line
    naming the missing file."""
    parts = []
    for suite in suites:
        path = directory / file_name.format(suite=suite)
        parts.append(render(suite, json.loads(path.read_text())) if path.exists() else f"{suite}: no {path.name}")
    return parts


def model_section(directory: Path) -> str:
    header = ["op call", "bytes / min", "FLOPs / min", "worst sector eff.", "worst bank conflict", "modelled us",
              "baseline / ours"]

    def render(suite, data):
        return (f"**{suite}** ({data['blocks_per_launch']} blocks per launch)\n\n" +
                _table(header, model_rows(data["records"])))

    return "\n\n".join(_suite_parts(directory, MODEL_SUITES, "{suite}-h100-model.json", render))


H200_MEMORY_BYTES = 143771 * 2**20  # what the H200 of the committed GPU run reported


def _measured_gaussian_us(directory: Path) -> dict:
    """(B, C, H, dtype name, pass) -> {path: measured us} from nlm-cuda.json: "materialize" is
    the reference's time, "sdpa" SDPA's, "kernel" the forced kernel's (or "fused"'s where that
    ran the kernel)."""
    path = directory / "nlm-cuda.json"
    if not path.exists():
        return {}
    measured = {}
    for case in json.loads(path.read_text())["cases"]:
        name = case["case"].split()
        if name[0] != "gaussian":
            continue
        b, c, h = int(name[1][1:]), int(name[2][1:]), int(name[4].split("x")[0])
        impls = case["implementations"]
        times = {"materialize": impls.get("reference", {}).get("median_s"), "sdpa": impls.get("sdpa", {}).get("median_s"),
                 "kernel": impls.get("kernel", {}).get("median_s")}
        if times["kernel"] is None and case.get("path") == "kernel":
            times["kernel"] = impls.get("fused", {}).get("median_s")
        measured[(b, c, h, name[5], name[6])] = {k: 1e6 * v for k, v in times.items() if v}
    return measured


def nlm_dispatch_section(directory: Path) -> str:
    """backend="auto"'s choice for nlm_gaussian on an H200 at the NLM shapes of the model file
    (fastrobust.ops.nlm_dispatch: each path's roofline over its efficiency measured there), next
    to the times nlm-cuda.json measured."""
    path = directory / "nlm-h100-model.json"
    if not path.exists():
        return f"nlm_gaussian dispatch: no {path.name}"
    import torch

    from fastrobust.ops import nlm_dispatch

    shapes = []
    for r in json.loads(path.read_text())["records"]:
        if r["op"] == "nlm_gaussian" and r["kernel"] == "(op)" and r["dtype"] == "bfloat16":
            shape = tuple(int(x) for x in r["case"][r["case"].index("(") + 1:r["case"].index(")")].split(","))
            if shape not in shapes:
                shapes.append(shape)
    measured = _measured_gaussian_us(directory)
    paths = ("kernel", "sdpa", "materialize")

    def cell(expected, got):
        exp = "-" if expected is None else f"{expected:.0f}"
        return exp + ("" if got is None else f" / {got:.0f}")

    rows = []
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for b, c, h, w in shapes:
            for backward in (False, True):
                decision = nlm_dispatch.decide("cuda", dtype, (9, 0), b, c // 2, c, h * w, backward, H200_MEMORY_BYTES)
                got = measured.get((b, c, h, label, "fwd+bwd" if backward else "fwd"), {})
                fastest = min(got, key=got.get) if got else "-"
                rows.append([f"B{b} C{c} d{c // 2} {h}x{w} {label}", "fwd+bwd" if backward else "fwd"] +
                            [cell(decision.expected_us.get(p), got.get(p)) for p in paths] +
                            [decision.path, fastest])
    return ("**nlm_gaussian dispatch on an H200** (`backend=\"auto\"`, fastrobust.ops.nlm_dispatch; "
            "expected us, each path's roofline over its efficiency measured on the H200 / measured us, "
            "nlm-cuda.json)\n\n" +
            _table(["case", "pass", "kernel", "SDPA (padded)", "materialize", "auto runs", "measured fastest"], rows))


def cpu_rows(cases: List[dict], baselines: Iterable[str]) -> List[List[str]]:
    baselines = list(baselines)
    return [[c["case"]] + [_ratio((c.get("speedup_of_fused") or {}).get(b)) for b in baselines] for c in cases]


def measured_section(directory: Path, device: str) -> str:
    """The suites' SUITE-DEVICE.json files (device: cpu or cuda)."""
    def render(suite, data):
        baselines = sorted({b for c in data["cases"] for b in (c.get("speedup_of_fused") or {})})
        meta = data["metadata"]
        return (f"**{suite}** ({meta.get('device_name', '?')}, {meta.get('torch_threads', '?')} threads, "
                f"commit {str(meta.get('git_commit', '?'))[:8]}; t_baseline / t_fastrobust)\n\n" +
                _table(["case"] + baselines, cpu_rows(data["cases"], baselines)))

    def render_pgd(suite, data):
        rows = []
        for c in data["cases"]:
            over = c.get("overhead_over_floor_pct") or {}
            if over:
                rows.append([c["case"]] + [("-" if over.get(i) is None else f"{over[i]:+.1f} %")
                                           for i in ("fastrobust", "fastrobust keep=success", "torchattacks")])
        meta = data["metadata"]
        return (f"**{suite}** ({meta.get('device_name', '?')}, commit {str(meta.get('git_commit', '?'))[:8]}; "
                "time over 10 x (forward + input gradient))\n\n" +
                _table(["case", "fastrobust (keep=last)", "keep=success", "torchattacks"], rows))

    def render_attacks(suite, data):
        rows = []
        for c in data["cases"]:
            impls = c["implementations"]

            def accuracy(name):
                e = impls.get(name, {})
                return f"{e['robust_accuracy']:.2f} %" if "robust_accuracy" in e else "-"

            rows.append([f"{c['model']} {c['attack']}", accuracy("fastrobust"), accuracy("official"),
                         accuracy("torchattacks")] +
                        [_ratio(c["speedup_of_fastrobust"].get(b)) for b in ("official", "torchattacks")])
        meta = data["metadata"]
        return (f"**{suite}** ({meta.get('device_name', '?')}, {meta.get('torch_threads', '?')} threads, "
                f"commit {str(meta.get('git_commit', '?'))[:8]}; robust accuracy, and t_baseline / t_fastrobust)\n\n" +
                _table(["case", "fastrobust", "official AutoAttack", "torchattacks", "vs official", "vs torchattacks"],
                       rows))

    parts = _suite_parts(directory, CPU_SUITES, "{suite}-%s.json" % device, render)
    parts += _suite_parts(directory, ["pgd"], "{suite}-%s.json" % device, render_pgd)
    parts += _suite_parts(directory, ["attacks"], "{suite}-%s.json" % device, render_attacks)
    return "\n\n".join(parts)


def gpu_check_line(directory: Path) -> str:
    """Which GPU, torch and commit the SUITE-cuda.json files come from, and the steps of the
    gpu_check.sh run that did not pass."""
    path = directory / "gpu_check.json"
    if not path.exists():
        return f"no {path.name}"
    report = json.loads(path.read_text())
    gpu = (report.get("gpus") or [{}])[0]
    torch_info = report.get("torch") or {}
    not_passed = [f"{s['name']} ({s['status']})" for s in report.get("steps", [])
                  if s["status"] not in ("passed", "skipped_by_request")]
    counts = (report.get("tests") or {}).get("counts", {})
    return (f"{gpu.get('name', '?')}, driver {gpu.get('driver', '?')}, torch {torch_info.get('version', '?')}, "
            f"commit {str(report.get('git_commit'))[:8]}, {report.get('timestamp', '?')}; tests "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + ("; steps not passed: " + ", ".join(not_passed) if not_passed else "; every step passed"))


def render(directory: Path) -> str:
    return ("### Modelled on an H100 (a model, not a measurement)\n\n" + model_section(directory) +
            "\n\n" + nlm_dispatch_section(directory) + "\n\n### Measured on the CPU\n\n" + measured_section(directory, "cpu") +
            "\n\n### Measured on a GPU (benchmarks/gpu_check.sh)\n\n" + gpu_check_line(directory) + "\n\n" +
            measured_section(directory, "cuda") + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(render(Path(argv[0]) if argv else DEFAULT_DIR), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
