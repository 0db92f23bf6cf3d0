"""python -m fastrobust.train [--option value ...]; under torchrun for DDP:
torchrun --nproc_per_node 2 -m fastrobust.train --data digits --recipe pgd

Errors in the options, a checkpoint, the data or the files (a read-only folder, a full disk)
are one line on stderr with exit status 2, as with the `fastrobust` command."""
import json
import os
import sys

from ..cli.errors import one_line, user_os_error
from .checkpoint import CheckpointError
from .config import ConfigError, config_from_args
from .trainer import Trainer


def main(argv=None) -> int:
    """Trains with the options of the command line; errors propagate to run()."""
    trainer = Trainer(config_from_args(argv))
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    if int(os.environ.get("RANK", "0")) == 0:
        shown = {k: v for k, v in result.metrics.items() if k.startswith("final_") or k in ("train_time_s",)}
        print(json.dumps(shown, indent=2, default=str))
        print(f"checkpoint: {result.checkpoint}\nmetrics: {result.metrics_path}\nplot: {result.plot_path}")
    return 0


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
