"""Clean and PGD accuracy of a model over batches: what the trainer reports each epoch (test set,
overfitting guard) and at the end, and `fastrobust.train.evaluate_pgd` for users."""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple, Union

import torch
from torch import nn

from ..attacks import PGD
from ..attacks.model_runner import eval_mode
from ..data.loader import _mix
from ..dtypes import autocast_context

Batches = Iterable[Tuple[torch.Tensor, torch.Tensor]]


def as_batches(data, y: Optional[torch.Tensor], batch_size: int) -> Batches:
    if isinstance(data, torch.Tensor):
        if y is None:
            raise ValueError("evaluate_pgd: pass labels y with a tensor of inputs")
        return [(data[i:i + batch_size], y[i:i + batch_size]) for i in range(0, data.shape[0], batch_size)]
    if y is not None:
        raise ValueError("evaluate_pgd: y is only for a tensor of inputs, the loader yields its labels")
    return data


def accuracy_counts(model: nn.Module, batches: Batches, eps: float, alpha: Optional[float], steps: int,
                 seed: int, autocast: Optional[torch.dtype], channels_last: bool, restarts: int,
                 device: Optional[torch.device] = None) -> torch.Tensor:
    """float64 tensor [n, clean correct, robust correct] on the batches' device (no host sync
    besides the attacks' own input check)."""
    counts = None
    with eval_mode(model):
        for i, (xb, yb) in enumerate(batches):
            if device is not None:
                xb, yb = xb.to(device), yb.to(device)
            if counts is None:
                counts = torch.zeros(3, dtype=torch.float64, device=xb.device)
            if xb.shape[0] == 0:
                continue
            if channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), autocast_context(xb.device, autocast):
                clean = model(xb)
            clean = (clean[0] if isinstance(clean, (tuple, list)) else clean).argmax(1) == yb
            if eps > 0 and steps > 0:
                attack = PGD(model, eps=eps, alpha=eps / 4 if alpha is None else alpha, steps=steps,
                             random_start=True, restarts=restarts, seed=int(_mix(seed, i)) % (2 ** 62),
                             autocast=autocast, channels_last=channels_last)
                robust = clean & ~attack.run(xb, yb).success
            else:
                robust = clean
            counts += torch.stack([torch.tensor(float(yb.shape[0]), dtype=torch.float64, device=xb.device),
                                   clean.sum().double(), robust.sum().double()])
    if counts is None:
        counts = torch.zeros(3, dtype=torch.float64)
    return counts


def evaluate_pgd(model: nn.Module, data: Union[torch.Tensor, Batches], y: Optional[torch.Tensor] = None, *,
                 eps: float, alpha: Optional[float] = None, steps: int = 20, restarts: int = 1,
                 batch_size: int = 500, seed: int = 0, autocast: Optional[torch.dtype] = None,
                 channels_last: bool = False) -> Dict[str, float]:
    """Clean and PGD accuracy of `model` (in eval mode; its modes are restored after).

    data: a tensor of inputs in [0, 1] with labels y, or any iterable of (x, y) batches (e.g.
    a TensorLoader with shuffle=False). PGD: L-inf, eps, alpha (default eps/4), `steps`
    (default 20: PGD-20), random start, `restarts`, seeded (reproducible). A sample counts as
    robust when it is classified correctly and no PGD iterate fools it.
    Returns {"clean_acc", "pgd_acc", "n"} (accuracies as fractions in [0, 1]).
    """
    counts = accuracy_counts(model, as_batches(data, y, batch_size), float(eps), alpha, int(steps), int(seed),
                          autocast, channels_last, int(restarts)).tolist()
    n = counts[0]
    return {"clean_acc": counts[1] / n if n else float("nan"), "pgd_acc": counts[2] / n if n else float("nan"),
            "n": int(n)}
