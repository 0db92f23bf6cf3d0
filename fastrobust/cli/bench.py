"""`fastrobust bench SUITE [...]`: the benchmark suites of fastrobust.bench (fastrobust.bench.run
parses its own options: everything after `bench` goes to it). Results go to ./bench-results
unless --out says otherwise."""
from __future__ import annotations

from .errors import CLIError


def add_parser(sub) -> None:
    from ..bench import SUITES

    p = sub.add_parser("bench", help=f"run a benchmark suite ({' | '.join(SUITES)} | all; fastrobust bench --help)",
                       add_help=False)
    p.add_argument("bench_args", nargs="*")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench import run as runner

    try:
        return runner.main(args.bench_args)
    except SystemExit as exc:  # the suites' own one-line errors (e.g. --device cuda without a GPU)
        if isinstance(exc.code, str):
            raise CLIError(exc.code) from None
        raise
