"""The NLM suite's "block" cases (fastrobust/bench/nlm.py): a PreActResNet18 stage followed by
a DenoisingBlock, as modules ("fused") and written out with the materialised reference op
("reference"), on seeded weights with BatchNorms that keep no running statistics."""
from __future__ import annotations

import functools
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from .harness import SEED

BLOCK_INPUT_SIZE = 32  # CIFAR images: layer1 runs at 32x32, layer3 at 8x8


@functools.lru_cache(maxsize=None)
def block_modules(stage: str):
    """nn.Sequential(PreActResNet18().<stage>, DenoisingBlock(C)) with seeded weights and
    BatchNorms without running statistics (see the module docstring), and the parameters'
    initial values: (module, {name: float32 tensor})."""
    from torch import nn

    from fastrobust.models import PreActResNet18
    from fastrobust.nn import DenoisingBlock

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        layer = getattr(PreActResNet18(), stage)
        channels = [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        block = DenoisingBlock(channels, "gaussian")
        with torch.no_grad():
            block.bn.weight.fill_(1.0)
            for conv in (block.nlm.theta, block.nlm.phi):
                conv.weight.normal_(0.0, channels ** -0.5)
    module = nn.Sequential(layer, block)
    for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.track_running_stats = False
        bn.running_mean = bn.running_var = bn.num_batches_tracked = None
    values = {name: p.detach().clone() for name, p in module.named_parameters()}
    return module, values


def block_parameters(stage: str) -> Dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in block_modules(stage)[1].items()}


def block_sizes(stage: str) -> Tuple[int, int, int]:
    """(input channels, input H = W, output H = W) of a PreActResNet18 stage for a
    BLOCK_INPUT_SIZE image: layer1 keeps the size, layer2 .. layer4 halve it (stride 2 in
    their first block)."""
    from torch import nn

    module = block_modules(stage)[0]
    first = next(m for m in module.modules() if isinstance(m, nn.Conv2d))
    index = int(stage[len("layer"):])
    size = BLOCK_INPUT_SIZE // 2 ** max(index - 2, 0)
    return first.in_channels, size, size // first.stride[0]


def block_fused(case):
    """The modules themselves: stage then DenoisingBlock (fastrobust.ops.nlm.nlm_gaussian)."""
    from torch.func import functional_call

    module, values = block_modules(case.stage)
    names = tuple(values)

    def run(x, *params):
        return functional_call(module, dict(zip(names, params)), (x,))

    return run


def block_reference(case):
    """The stage through its modules, then the block written out with the materialised
    reference op: y + BN(conv1x1(nlm_gaussian(theta(y), phi(y), y)))."""
    from torch.func import functional_call

    from fastrobust.reference.nlm import nlm_gaussian

    module, values = block_modules(case.stage)
    stage, block = module
    names = tuple(values)
    stage_names = [n for n in names if n.startswith("0.")]
    scale, eps = block.nlm.scale, block.bn.eps

    def run(x, *params):
        p = dict(zip(names, params))
        y = functional_call(stage, {n[2:]: p[n] for n in stage_names}, (x,))
        z = nlm_gaussian(F.conv2d(y, p["1.nlm.theta.weight"]), F.conv2d(y, p["1.nlm.phi.weight"]), y, scale)
        z = F.conv2d(z, p["1.conv.weight"])
        return y + F.batch_norm(z, None, None, p["1.bn.weight"], p["1.bn.bias"], training=True, eps=eps)

    return run
