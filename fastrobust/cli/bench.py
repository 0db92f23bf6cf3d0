"""`fastrobust bench SUITE [...]`: the benchmark suites of a source checkout (benchmarks/run.py,
which parses its own options: everything after `bench` goes to it)."""
from __future__ import annotations

import ast
import pathlib
import sys

from .errors import CLIError

# the source checkout an editable install points into
CHECKOUT = pathlib.Path(__file__).resolve().parent.parent.parent


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help=f"run a benchmark suite ({_suites()}; fastrobust bench --help)", add_help=False)
    p.add_argument("bench_args", nargs="*")
    p.set_defaults(func=run)


def run(args) -> int:
    if not (CHECKOUT / "benchmarks" / "run.py").is_file():
        raise CLIError("benchmarks/ not found next to the package; run it from a source checkout installed "
                       "with `pip install --no-build-isolation -e .`")
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    from benchmarks import run as runner  # noqa: E402  (found through the checkout)

    try:
        return runner.main(args.bench_args)
    except SystemExit as exc:  # the suites' own one-line errors (e.g. --device cuda without a GPU)
        if isinstance(exc.code, str):
            raise CLIError(exc.code) from None
        raise


def _suites() -> str:
    """'sparta | pgd | ... | all' from benchmarks.run.SUITES (for the help; read without
    importing the benchmarks), or a pointer where the checkout has no benchmarks/."""
    path = CHECKOUT / "benchmarks" / "run.py"
    try:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUITES" for t in node.targets):
                return " | ".join(ast.literal_eval(node.value)) + " | all"
    except (OSError, SyntaxError, ValueError):
        pass
    return "needs a source checkout"
