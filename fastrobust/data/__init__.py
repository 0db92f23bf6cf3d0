"""Small data sets for tests and quick experiments."""
from .digits import load_digits

__all__ = ["load_digits"]
