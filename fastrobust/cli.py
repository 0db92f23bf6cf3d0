"""The `fastrobust` command line.

    fastrobust train [options]          adversarial training, then the robustness evaluation
                                        (no options: the embedded digits run on the CPU, minutes)
    fastrobust eval CHECKPOINT [...]    robustness evaluation of a training checkpoint
    fastrobust bench SUITE [...]        benchmark suites (needs a source checkout: benchmarks/)
    fastrobust info [--json]            build information and which ops have CPU/CUDA kernels

`fastrobust COMMAND --help` lists a command's options and their defaults. Errors in the
options, the data, a checkpoint or the device are one line on stderr with exit status 2.
"""
import pathlib
import sys

from ._cli_common import CLIError, HelpFormatter, Parser, one_line

def _benchmarks_root() -> pathlib.Path:
    """The source checkout holding benchmarks/ (an editable install points into it)."""
    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        raise CLIError("benchmarks/ not found next to the package; run it from a source checkout installed "
                       "with `pip install --no-build-isolation -e .`")
    return root


def _cmd_info(args) -> int:
    from . import info

    return info.main(["--json"] if args.json else [])


def _cmd_bench(args) -> int:
    root = _benchmarks_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import run  # noqa: E402  (found through the checkout)

    try:
        return run.main(args.bench_args)
    except SystemExit as exc:  # the suites' own one-line errors (e.g. --device cuda without a GPU)
        if isinstance(exc.code, str):
            raise CLIError(exc.code) from None
        raise


def _bench_suites() -> str:
    """'sparta, pgd, ... or all' from benchmarks.run.SUITES (for the help; read without importing
    the benchmarks), or a pointer where the checkout has no benchmarks/."""
    import ast

    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    try:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUITES" for t in node.targets):
                return " | ".join(ast.literal_eval(node.value)) + " | all"
    except (OSError, SyntaxError, ValueError):
        pass
    return "needs a source checkout"


def build_parser() -> Parser:
    from . import cli_eval, cli_train

    parser = Parser(prog="fastrobust", description=__doc__.split("\n\n")[1], formatter_class=HelpFormatter,
                    allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_train.add_parser(sub)
    cli_eval.add_parser(sub)
    p_bench = sub.add_parser("bench", help=f"run a benchmark suite ({_bench_suites()}; fastrobust bench --help)",
                             add_help=False)
    p_bench.add_argument("bench_args", nargs="*")
    p_bench.set_defaults(func=_cmd_bench)
    p_info = sub.add_parser("info", help="build information and kernel availability",
                            description="Build information and which ops have CPU / CUDA kernels.")
    p_info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_info.set_defaults(func=_cmd_info)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        # everything after `bench` (--help included) goes to the benchmark runner's own parser
        args = build_parser().parse_args(["bench"])
        args.bench_args = argv[1:]
    else:
        args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"fastrobust {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nfastrobust {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
