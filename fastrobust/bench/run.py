"""Command line of the benchmark suites: `fastrobust bench sparta --device cpu`, or
`python -m fastrobust.bench sparta ...`; a source checkout's `python -m benchmarks.run ...`
runs it with the checkout's results folder as the default --out."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import torch

from ..dtypes import torch_dtype_name
from . import SUITES, harness, results


def parse_dtypes(values: Optional[List[str]]) -> Optional[List[torch.dtype]]:
    if not values:
        return None  # each suite's default
    names = [n for v in values for n in v.split(",") if n.strip()]
    return list(dict.fromkeys(harness.parse_dtype(n) for n in names))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return device


def build_parser(default_out: Path = harness.DEFAULT_OUT_DIR) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastrobust bench",
        description="Time fastrobust's fused ops against their eager reference and torch.compile. "
                    "Every implementation is checked against the reference before it is timed.")
    p.add_argument("suite", choices=sorted(SUITES) + ["all"], help="suite to run ('all': every suite)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when a GPU is visible, else cpu (default)")
    p.add_argument("--dtype", action="append", metavar="DTYPE",
                   help="fp32, bf16, fp16, fp64; repeat or comma-separate (default: the suite's, fp32 and bf16)")
    p.add_argument("--quick", action="store_true", help="tiny batch and short timing: a smoke run")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the torch.compile baselines (slow to build on small CPUs)")
    p.add_argument("--out", type=Path, default=default_out,
                   help=f"directory for <suite>-<device>.json/.csv/.png (default: {default_out})")
    run_time = harness.DEFAULT_MIN_RUN_TIME
    p.add_argument("--min-run-time", type=float, default=None,
                   help=f"seconds of timing per implementation and case (default: cpu {run_time['cpu']}, "
                        f"cuda {run_time['cuda']}, --quick {harness.QUICK_MIN_RUN_TIME})")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"interleaved timing rounds (default {harness.TIMING_ROUNDS}, "
                        f"--quick {harness.QUICK_TIMING_ROUNDS})")
    p.add_argument("--quiet", action="store_true", help="no per-case progress lines")
    p.add_argument("--model", choices=["h100"], default=None,
                   help="instead of timing, model the suite's CUDA kernels on an H100 through the CPU emulator "
                        "(fastrobust.cost_model; a model, not a measurement): <suite>-h100-model.json")
    p.add_argument("--model-blocks", type=int, default=32,
                   help="--model: blocks emulated per launch, scaled to the grid (default: 32; --quick: 2)")
    p.add_argument("--model-ops", type=lambda text: [o.strip() for o in text.split(",") if o.strip()], default=None,
                   metavar="OPS", help="--model: model only these ops of the suite (comma-separated) and replace their "
                                       "records in the existing model file, keeping the others' (its `updates` "
                                       "list says which ops were modelled again, when; default: every op)")
    p.add_argument("--model-dtypes", type=_model_dtypes, default=None, metavar="DTYPES",
                   help="--model: model only the cases of these dtypes (comma-separated: fp32, bf16, ...; tf32: "
                        "the fp32 cases run as tf32 alone) and replace their records in the existing model file, "
                        "as --model-ops (with which it combines)")
    return p


TF32 = "tf32"  # --model-dtypes: the fp32 cases whose products run as tf32 (their records' "math")


def _model_dtypes(text: str) -> List[str]:
    """--model-dtypes: the record names (float32, bfloat16, ...) of fp32,bf16,..., and tf32 as it is
    (an unknown name is argparse's usage error)."""
    try:
        return [t if t == TF32 else torch_dtype_name(harness.parse_dtype(t))
                for t in (t.strip() for t in text.split(",")) if t]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _selected(dtypes: Optional[List[str]], dtype: str, math: Optional[str]) -> bool:
    """Whether --model-dtypes selects a case (or record) of dtype run as math: a dtype's name
    selects all of its cases, tf32 the fp32 cases run as tf32."""
    return dtypes is None or dtype in dtypes or (math == TF32 and TF32 in dtypes)


def model_one(name: str, args) -> bool:
    """Writes <out>/<suite>-h100-model.json from the emulator's cost model."""
    import json

    from fastrobust import _extension, cost_model
    from fastrobust.kernel_cases import SUITE_OPS, launch_cases

    if name not in SUITE_OPS:
        print(f"{name}: no kernels of its own to model (--model covers {', '.join(sorted(SUITE_OPS))})")
        return True
    if not _extension.HAS_EMU:
        raise SystemExit("--model: needs the extension built with the CUDA emulator (FR_EMULATE_CUDA=1)")
    blocks = 2 if args.quick else args.model_blocks
    suffix = "-quick" if args.quick else ""
    path = args.out / f"{name}-{args.model}-model{suffix}.json"
    ops = args.model_ops or list(SUITE_OPS[name])
    unknown = [op for op in ops if op not in SUITE_OPS[name]]
    if unknown:
        raise SystemExit(f"--model-ops: {', '.join(unknown)} is not an op of the {name} suite "
                         f"({', '.join(SUITE_OPS[name])})")
    dtypes = args.model_dtypes
    partial = bool(args.model_ops or dtypes)
    existing = _existing_model(path, blocks) if partial else None
    cases = [c for c in launch_cases() if c.op in ops and _selected(dtypes, c.dtype, c.math)]
    if not cases:
        raise SystemExit(f"--model-dtypes: no case of the {name} suite's ops {', '.join(ops)} has dtype "
                         f"{' or '.join(dtypes or [])}")
    start = time.perf_counter()
    result = cost_model.suite_model(name, blocks, cases=cases)
    result["wall_time_s"] = seconds = time.perf_counter() - start
    result["argv"] = list(args.argv)
    if existing is not None:
        result = _merged_model(existing, result, ops, dtypes)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(cost_model.format_model(result))
    print(f"{name}: modelled in {seconds:.0f} s\n  json: {path}")
    return True


def _existing_model(path: Path, blocks: int) -> dict:
    """--model-ops / --model-dtypes: the model file whose other records are kept (modelled with as
    many blocks per launch as this run, so its records compare)."""
    import json

    if not path.is_file():
        raise SystemExit(f"--model-ops/--model-dtypes: {path} does not exist; model the whole suite first "
                         "(--model without them)")
    old = json.loads(path.read_text())
    if old.get("blocks_per_launch") != blocks:
        raise SystemExit(f"--model-ops/--model-dtypes: {path} was modelled with {old.get('blocks_per_launch')} "
                         f"blocks per launch, "
                         f"this run with {blocks}; give --model-blocks {old.get('blocks_per_launch')}")
    return old


def _merged_model(old: dict, fresh: dict, ops: List[str], dtypes: Optional[List[str]] = None) -> dict:
    """The model `old` with the records of `ops` (of `dtypes`, when given) replaced by fresh's
    (each case's where its old ones were), its other records and header kept, and the update
    noted in its `updates` list."""
    records, placed = [], set()
    for record in old["records"]:  # each case's fresh records where its old ones were
        case = record["case"]
        if record["op"] not in ops or not _selected(dtypes, record["dtype"], record.get("math")):
            records.append(record)
        elif case not in placed:
            placed.add(case)
            records.extend(r for r in fresh["records"] if r["case"] == case)
    records.extend(r for r in fresh["records"] if r["case"] not in placed)  # cases the old file lacked
    update = {"ops": list(ops), **({"dtypes": list(dtypes)} if dtypes else {}), "argv": fresh["argv"], "wall_time_s": fresh["wall_time_s"],
              "git_commit": results.git_commit(), "date": time.strftime("%Y-%m-%d")}
    return {**old, "records": records, "updates": old.get("updates", []) + [update]}


def run_one(name: str, device: str, dtypes, options: harness.Options) -> bool:
    """Runs one suite, prints its table and paths; True when every check passed."""
    module = importlib.import_module(f"{__package__}.{SUITES[name]}")
    if hasattr(module, "run"):  # a suite that does not fit harness.Case (attacks) runs itself
        return module.run(device, dtypes, options)
    suite = module.build_suite(device, dtypes=dtypes, quick=options.quick)
    start = time.perf_counter()
    result = results.run_suite(suite, device, options)
    result["wall_time_s"] = time.perf_counter() - start
    written = results.write_results(result, options.out_dir)
    print(results.format_table(result))
    print(f"{name}: {len(suite.cases)} cases in {result['wall_time_s']:.0f} s")
    for kind, path in written.items():
        print(f"  {kind}: {path}")
    return all(results.check_summary(c) == "ok" for c in result["cases"])


def main(argv: Optional[List[str]] = None, default_out: Path = harness.DEFAULT_OUT_DIR,
         written: Callable[[argparse.Namespace], None] = lambda args: None) -> int:
    """The suites of argv; written(args) after they wrote their results (a checkout's
    benchmarks/run.py refreshes its summary there)."""
    args = build_parser(default_out).parse_args(argv)
    if args.model_blocks < 1:
        raise SystemExit(f"--model-blocks must be >= 1, got {args.model_blocks}")
    if args.model:
        args.argv = list(sys.argv[1:] if argv is None else argv)
        names = sorted(SUITES) if args.suite == "all" else [args.suite]
        ok = all(model_one(name, args) for name in names)
        written(args)
        return 0 if ok else 1
    device = resolve_device(args.device)
    try:
        dtypes = parse_dtypes(args.dtype)
    except ValueError as exc:
        raise SystemExit(f"--dtype: {exc}")
    options = harness.Options(out_dir=args.out, min_run_time=args.min_run_time, rounds=args.rounds,
                              quick=args.quick, compile=args.compile, verbose=not args.quiet,
                              argv=list(sys.argv[1:] if argv is None else argv))
    names = sorted(SUITES) if args.suite == "all" else [args.suite]
    all_ok = True
    for name in names:
        all_ok &= run_one(name, device, dtypes, options)
    written(args)
    # Non-zero when some implementation was wrong or failed (a compile error included).
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
