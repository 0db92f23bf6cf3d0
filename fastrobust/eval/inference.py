"""What the evaluation and the gradient-masking checks share: running a model on data
(predict, logits_of, model_device) and making their results JSON-safe (jsonable)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..attacks.model_runner import eval_mode
from ..dtypes import torch_dtype_name


def model_device(model: nn.Module, default: torch.device) -> torch.device:
    """The device of the model's first parameter (or buffer); `default` for a model without any."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return default


def logits_of(out) -> torch.Tensor:
    """The logits of a model output: the tensor itself, or the first element of a tuple/list."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device,
            autocast: Optional[torch.dtype] = None) -> torch.Tensor:
    """argmax predictions (on device) of model on x in eval mode, without gradients; -1 where the
    logits are not all finite (argmax would pick the NaN's class: no class is predicted there,
    so such a point is never counted correct)."""
    preds = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].to(device, non_blocking=True)
            if autocast is None:
                out = model(xb)
            else:
                with torch.autocast(device.type, dtype=autocast):
                    out = model(xb)
            logits = logits_of(out)
            pred = logits.argmax(dim=1)
            preds.append(torch.where(torch.isfinite(logits).all(dim=1), pred, torch.full_like(pred, -1)))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=device)


def jsonable(value):
    """Tensors, dtypes, tuples and non-finite floats made JSON-safe (recursively)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else f"tensor{tuple(value.shape)}"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.dtype):
        return torch_dtype_name(value)
    return repr(value) if not callable(value) else getattr(value, "__name__", repr(value))
