"""Public functional API of the fused ops (fall back to fastrobust.reference without _C)."""
from .sparta import sparta

__all__ = ["sparta"]
