"""Reference of CIFS (Yan et al., ICML 2021) in plain PyTorch.

`cifs_reweight` is the eager composition the fused op replaces; `cifs_layer` transcribes the
official module's forward (models/nets/resnet_CIFS.py): the probe on the non-detached feature
for its logits, the relevance as torch.autograd.grad of the top-2 logits with respect to the
detached feature (create_graph=True, so the probe weights get the second-order gradient),
summed over space, the mask scale * softmax over channels (scale 1 in the official code at
HEAD 2e68025; 2 at the older commit 2d8217c), and feat * mask. It is the oracle of
the tests; it needs autograd, so it fails under torch.no_grad().
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .._checks.cifs import check_reweight_args


def cifs_reweight(feat: torch.Tensor, relevance: torch.Tensor, temperature: float = 1.0,
                  scale: float = 1.0) -> torch.Tensor:
    """feat * scale * softmax(relevance / temperature, dim=1), broadcast over H and W."""
    check_reweight_args(feat, relevance, temperature, scale)
    acc = torch.float64 if feat.dtype == torch.float64 else torch.float32
    mask = scale * torch.softmax(relevance.to(acc) / temperature, dim=1)
    return (feat.to(acc) * mask[:, :, None, None]).to(feat.dtype)


def cifs_layer(feat: torch.Tensor, probe: nn.Module, labels: Optional[torch.Tensor], training: bool,
               temperature: float = 1.0, scale: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(feat * m, probe logits) as the official CIFS module computes them.

    probe: a module mapping the (B, C, H, W) feature to (B, K) logits through global average
    pooling first. Train mode (training=True, labels given): t1 = labels, t2 = the second of the
    probe's top-2 predictions (even when it is the label). Eval mode: top-1 and top-2.
    """
    probe_logits = probe(feat)
    with torch.enable_grad():
        detached = feat.detach().requires_grad_(True)
        logits = probe(detached)
        top2 = logits.topk(2, dim=1).indices
        t1 = labels if training else top2[:, 0]
        t2 = top2[:, 1]
        selected = logits.gather(1, t1[:, None]) + logits.gather(1, t2[:, None])
        (grad,) = torch.autograd.grad(selected.sum(), detached, create_graph=True)
    relevance = grad.sum(dim=(2, 3))
    mask = scale * torch.softmax(relevance / temperature, dim=1)
    return feat * mask[:, :, None, None], probe_logits
