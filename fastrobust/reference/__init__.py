"""Pure-PyTorch reference implementations of every fastrobust op.

Never imports the compiled extension: these are the oracle of the tests, the baseline of the
benchmarks, and the fallback where the extension is not built.
"""
from . import cifs, median, nlm, pgd
from .sparta import sparta

__all__ = ["cifs", "median", "nlm", "pgd", "sparta"]
