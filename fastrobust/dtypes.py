"""Dtype helpers: the name a torch dtype goes by in records, reports and the cost model
("float32", "bfloat16": torch's own name without the module prefix), and the autocast context
of an optional autocast dtype."""
import contextlib
from typing import Optional

import torch


def torch_dtype_name(dtype: torch.dtype) -> str:
    """"float32" for torch.float32."""
    return str(dtype).removeprefix("torch.")


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]):
    """torch.autocast on `device` in `dtype` (bf16/fp16 runs); nothing for dtype None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
