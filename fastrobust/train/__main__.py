"""python -m fastrobust.train [--option value ...]; under torchrun for DDP:
torchrun --nproc_per_node 2 -m fastrobust.train --data digits --recipe pgd"""
import sys

from .trainer import main

if __name__ == "__main__":
    sys.exit(main())
