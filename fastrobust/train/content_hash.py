"""A sha256 of a checkpoint's content: the values it holds, not the bytes of its file.

torch's zip container does not check what it reads back: a flipped byte in a tensor's data
loads silently as another number (a flipped byte in the pickle or the zip directory usually
fails to load). So the checkpoint stores a hash of its content, computed by walking the
payload in a fixed way, and load_checkpoint walks what it read and compares:

    tensor      dtype, shape, then the raw bytes of its values in row-major order
    dict        its size, then each key and value in insertion order (pickle keeps it)
    list/tuple  which of the two, its length, then each element
    scalar      its type name and repr (None, bool, int, float, str, bytes, complex,
                torch.dtype, torch.device): repr of a float round-trips exactly

Every item is framed by a tag and a length, so no two different payloads feed the same byte
stream. Hashing reads each tensor once (a GPU tensor is copied to the host one at a time);
sha256 runs at about 1 GB/s, so a WideResNet-34-10 checkpoint with momentum (about 370 MB)
costs a fraction of a second per save and per load. This guards against corruption, not
against someone who rewrites both the content and the hash.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch

_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


class UnhashableContent(TypeError):
    """The payload holds a value the walk does not know (the message gives its path)."""


def content_sha256(payload: Any) -> str:
    """The hex sha256 of `payload` (nested dicts, lists, tuples, tensors and plain scalars)."""
    h = hashlib.sha256()
    _feed(h, payload, "payload")
    return h.hexdigest()


def _frame(h, tag: str, data: bytes) -> None:
    h.update(f"{tag}{len(data)}:".encode())
    h.update(data)


def _feed(h, obj: Any, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.layout != torch.strided:
            raise UnhashableContent(f"{where}: a {t.layout} tensor; checkpoints hold dense tensors only")
        t = t.cpu().resolve_conj().resolve_neg().contiguous()
        _frame(h, "T", f"{t.dtype}{tuple(t.shape)}".encode())
        raw = t.reshape(-1).view(torch.uint8).numpy()  # the values' bytes, without a copy
        h.update(f"B{raw.nbytes}:".encode())
        h.update(raw)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key, value in obj.items():
            _feed(h, key, where)
            _feed(h, value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)) and type(obj) in (list, tuple, torch.Size):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for i, value in enumerate(obj):
            _feed(h, value, f"{where}[{i}]")
    elif isinstance(obj, _SCALARS):
        _frame(h, type(obj).__name__, repr(obj).encode())
    else:
        raise UnhashableContent(f"{where}: a {type(obj).__name__}; checkpoints hold tensors, numbers, strings, "
                                "lists and dicts only")
