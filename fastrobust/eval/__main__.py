"""python -m fastrobust.eval [options]: `fastrobust eval` (its options: --help). Under torchrun
the ranks share the evaluation, as with `fastrobust eval --distributed`:

    torchrun --nproc_per_node 2 -m fastrobust.eval runs/NAME/last.pt --attacks pgd20,apgd-ce

Errors are one line on stderr with exit status 2, as with the `fastrobust` command."""
import os
import sys

from ..cli import main


def run() -> int:
    """`fastrobust eval` with the command line; --distributed added in torchrun's environment
    (WORLD_SIZE set), which is what launching under torchrun asks for."""
    argv = ["eval"] + sys.argv[1:]
    if "WORLD_SIZE" in os.environ and "--distributed" not in argv:
        argv.append("--distributed")
    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
