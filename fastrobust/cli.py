"""The `fastrobust` command line.

    fastrobust info [--json]        build information and which ops have CPU/CUDA kernels
    fastrobust bench SUITE [...]    run a benchmark suite (needs a source checkout: benchmarks/)
"""
import argparse
import pathlib
import sys


def _benchmarks_root() -> pathlib.Path:
    """The source checkout holding benchmarks/ (an editable install points into it)."""
    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        raise SystemExit(
            "fastrobust bench: benchmarks/ not found next to the package; run it from a source "
            "checkout installed with `pip install --no-build-isolation -e .`"
        )
    return root


def _cmd_info(args) -> int:
    from . import info

    return info.main(["--json"] if args.json else [])


def _cmd_bench(args) -> int:
    root = _benchmarks_root()
    sys.path.insert(0, str(root))
    from benchmarks import run  # noqa: E402  (found through the checkout)

    return run.main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastrobust", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="build information and kernel availability")
    p_info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_info.set_defaults(func=_cmd_info)
    p_bench = sub.add_parser(
        "bench",
        help="run benchmarks (fastrobust bench sparta --help for options)",
        add_help=False,
    )
    p_bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    p_bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
