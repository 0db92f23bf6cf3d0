"""python -m fastrobust.detect [options]: `fastrobust detect` (its options: --help). Under
torchrun the ranks share the attacks and the detectors, as with `fastrobust detect --distributed`:

    torchrun --nproc_per_node 2 -m fastrobust.detect runs/survey/last.pt --attacks pgd,square

Errors are one line on stderr with exit status 2, as with the `fastrobust` command."""
import sys

from ..cli.ranks import module_main

if __name__ == "__main__":
    sys.exit(module_main("detect"))
