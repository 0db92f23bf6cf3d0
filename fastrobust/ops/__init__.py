"""Public functional API of the fused ops (fall back to fastrobust.reference without _C)."""
from .sparta import sparta

# Every op of the `fastrobust` library, with its backward ops: what `fastrobust info` reports.
OPS = {"sparta": ("sparta", "_sparta_backward")}

__all__ = ["OPS", "sparta"]
