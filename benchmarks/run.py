"""The benchmark suites of fastrobust.bench from a source checkout: `python -m benchmarks.run
SUITE [options]` writes to benchmarks/results/ by default and then rewrites its summary.md (the
README's performance tables) from the files there; other options as `fastrobust bench`."""
from __future__ import annotations

import sys
from typing import List, Optional

from fastrobust.bench.run import main as run_suites

from . import perf_summary


def refresh_summary(args) -> None:
    """Full results (or models) written to the committed folder: rewrite its summary.md."""
    if args.out.resolve() == perf_summary.DEFAULT_DIR and (args.model or not args.quick):
        (args.out / "summary.md").write_text(perf_summary.render(args.out))


def main(argv: Optional[List[str]] = None) -> int:
    return run_suites(argv, default_out=perf_summary.DEFAULT_DIR, written=refresh_summary)


if __name__ == "__main__":
    sys.exit(main())
