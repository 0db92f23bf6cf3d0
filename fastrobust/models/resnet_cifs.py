"""CIFAR ResNet-18 with CIFS in layer4, as in the official CIFS code (Yan et al., ICML 2021,
models/nets/resnet_CIFS.py): a CIFS layer on the post-activation output of both BasicBlocks of
layer4, block 1 with an mlp probe (hidden 128, Softplus beta 5), block 2 with a linear probe."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.cifs import CIFS
from .resnet import BasicBlock, ResNet18

__all__ = ["BasicBlock", "LAYER4_PROBES", "ResNet18CIFS"]

# Probe of the CIFS layer after each block of layer4; CIFS's defaults (hidden 128, beta 5) are
# the official mlp probe, its scale 1 the official mask (plain softmax; see fastrobust.nn.CIFS).
LAYER4_PROBES = ("mlp", "linear")


class ResNet18CIFS(ResNet18):
    """ResNet18 (same arguments, same parameter names) with a CIFS layer after each block of
    layer4. Inputs (N, in_channels, H, W) in [0, 1] (32x32 for CIFAR; pass mean/std to
    normalise inside the model). forward(x, labels=None) returns
    (logits, [probe_logits_1, probe_logits_2]), each (N, num_classes); labels (int64 (N,)) are
    required in train mode and ignored in eval mode (see fastrobust.nn.CIFS). Train with
    fastrobust.nn.cifs_loss; attack through fastrobust.models.CIFSLogits.

    layer4 is an nn.ModuleList (its blocks are called one by one), so denoise cannot name it.
    """

    def _make_stage(self, index: int, blocks: Sequence[nn.Module]) -> nn.Module:
        # layer4's blocks are called one by one: each output goes through its CIFS layer.
        return nn.ModuleList(blocks) if index == 4 else super()._make_stage(index, blocks)

    def _build_head(self, in_planes: int, num_classes: int) -> None:
        self.cifs = nn.ModuleList(CIFS(in_planes, num_classes, probe=probe) for probe in LAYER4_PROBES)
        super()._build_head(in_planes, num_classes)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        out = self.layer3(self.layer2(self.layer1(self._stem(x))))
        probe_logits = []
        for block, cifs in zip(self.layer4, self.cifs):
            out, logits = cifs(block(out), labels)
            probe_logits.append(logits)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out), probe_logits
