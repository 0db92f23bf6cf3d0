"""python -m fastrobust.eval [options]: `fastrobust eval` (its options: --help). Under torchrun
the ranks share the evaluation, as with `fastrobust eval --distributed`:

    torchrun --nproc_per_node 2 -m fastrobust.eval runs/NAME/last.pt --attacks pgd20,apgd-ce

Errors are one line on stderr with exit status 2, as with the `fastrobust` command."""
import sys

from ..cli.ranks import module_main

if __name__ == "__main__":
    sys.exit(module_main("eval"))
