"""python -m fastrobust.train [--option value ...]; under torchrun for DDP:
torchrun --nproc_per_node 2 -m fastrobust.train --data digits --recipe pgd

Errors in the options, a checkpoint, the data or the files (a read-only folder, a full disk)
are one line on stderr with exit status 2, as with the `fastrobust` command."""
import sys

from ..cli.errors import one_line, user_os_error
from .checkpoint import CheckpointError
from .config import ConfigError
from .trainer import main


def run() -> int:
    try:
        return main()
    except (CheckpointError, ConfigError, ValueError, FloatingPointError) as exc:
        message = one_line(exc)
    except OSError as exc:
        message = user_os_error(exc)
        if message is None:
            raise
    print(f"fastrobust.train: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(run())
