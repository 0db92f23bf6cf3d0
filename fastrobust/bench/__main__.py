"""python -m fastrobust.bench SUITE [options]: the benchmark suites (`fastrobust bench`)."""
import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
