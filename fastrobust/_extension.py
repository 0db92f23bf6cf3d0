"""Loads the compiled extension fastrobust._C, if it was built.

Importing _C registers the C++/CUDA ops with the PyTorch dispatcher. Without it every op of
fastrobust falls back to its pure-PyTorch reference (fastrobust.reference), with a one-time
warning that says why.
"""
import warnings

import torch  # noqa: F401  (libtorch must be loaded before _C)

try:
    from . import _C  # type: ignore[attr-defined]

    HAS_EXT = True
    EXT_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    HAS_EXT = False
    EXT_ERROR = f"{type(exc).__name__}: {exc}"

# The CUDA device code compiled for the CPU emulator (FR_EMULATE_CUDA=1 builds).
HAS_EMU = bool(HAS_EXT and getattr(_C, "with_cuda_emulation", False))
WITH_CUDA = bool(HAS_EXT and getattr(_C, "with_cuda", False))

_warned = set()


def warn_fallback(op: str) -> None:
    """Warns once per op that the reference implementation is used instead of a kernel
    (not while torch.compile traces: dynamo cannot trace warnings.warn)."""
    if op in _warned or torch.compiler.is_compiling():
        return
    _warned.add(op)
    why = (f"the compiled extension is not available ({EXT_ERROR})" if not HAS_EXT
           else "the compiled extension was built without this op (rebuild it)")
    warnings.warn(
        f"fastrobust: {why}; {op} runs its pure-PyTorch reference. Build it with "
        "`pip install --no-build-isolation -e .`",
        RuntimeWarning,
        stacklevel=3,
    )
