"""python -m fastrobust.cli COMMAND [...]: the `fastrobust` console script."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
