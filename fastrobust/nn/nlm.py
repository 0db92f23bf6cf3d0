"""Feature denoising blocks (Xie, Wu, van der Maaten, Yuille, He; CVPR 2019) as drop-in layers.

    DenoisingBlock(x) = x + BN(conv1x1(nlm(x)))

with the 1x1 convolution C -> C without bias (He init, fan_out, as tensorpack's
variance_scaling(2, fan_out)), no ReLU after the BN, and the BN weight initialised to 0: a
fresh block is exactly the identity. `nlm` is a NonLocalMeans layer:

    gaussian  y_i = sum_j softmax_j(theta_i . phi_j / sqrt(d)) g_j   (fastrobust.ops.nlm.nlm_gaussian,
              fused: on the CPU the N x N affinity is stored whole only where N <= C)
    dot       y_i = (1/N) sum_j (theta_i . phi_j) g_j                 (fastrobust.ops.nlm.nlm_dot)
    mean      3x3 average, stride 1, same padding                     (fastrobust.reference.nlm.mean3x3)
    median    3x3 per-channel median, gradient to the arg-median      (fastrobust.ops.median.median3x3)

over the N = H * W positions of the feature map. Embedded (the default of gaussian and dot):
theta = conv1x1(x), phi = conv1x1(x), both C -> C // 2 without bias, weights N(0, 0.01), and
d = C // 2; the value is not embedded, g = x. Not embedded: theta = phi = g = x and d = C.
`add_denoising_blocks` puts a block after named stages of a ResNet (Xie et al.: after res2,
res3, res4 and res5).
"""
from __future__ import annotations

import math
import re
from typing import Iterable, List, Optional, Union

import torch
from torch import nn

from ..ops.median import median3x3
from ..ops.nlm import nlm_dot, nlm_gaussian
from ..reference.nlm import mean3x3

MODES = ("gaussian", "dot", "mean", "median")
EMBEDDABLE_MODES = ("gaussian", "dot")
EMBED_INIT_STD = 0.01  # theta and phi weights, as the original code (tensorpack, resnet_model.py)
# Xie et al.'s stage names (res2 .. res5) for torchvision's and fastrobust's (layer1 .. layer4).
STAGE_ALIASES = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"}
_STAGE_NAME = re.compile(r"layer\d+")


def _check_channels(channels) -> int:
    if not isinstance(channels, int) or isinstance(channels, bool) or channels <= 0:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    return channels


def _check_mode(mode) -> str:
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    return mode


def _resolve_embed(mode: str, embed) -> bool:
    """embed=None means True for gaussian and dot; mean and median have nothing to embed, so
    any embed given with them is an error rather than silently ignored."""
    if embed is not None and not isinstance(embed, bool):
        raise ValueError(f"embed must be True, False or None, got {embed!r}")
    if mode not in EMBEDDABLE_MODES:
        if embed is not None:
            raise ValueError(f"embed applies to modes {', '.join(repr(m) for m in EMBEDDABLE_MODES)} only; "
                             f"mode={mode!r} has no embedding (leave embed=None), got embed={embed!r}")
        return False
    return True if embed is None else embed


class NonLocalMeans(nn.Module):
    """The denoising operation of Xie et al. over a (B, channels, H, W) feature map; output of
    the input's shape. mode: "gaussian" (default), "dot", "mean" or "median"; embed (gaussian
    and dot only): theta and phi are 1x1 convolutions to channels // 2 (True, the default) or
    the input itself (False). See the module docstring for the formulas.

    Under autocast the op runs in the autocast dtype (fastrobust.ops.nlm casts its inputs, the
    non-embedded value x included).
    """

    def __init__(self, channels: int, mode: str = "gaussian", embed: Optional[bool] = None,
                 device=None, dtype=None):
        super().__init__()
        self.channels = _check_channels(channels)
        self.mode = _check_mode(mode)
        self.embed = _resolve_embed(mode, embed)
        if self.embed and channels < 2:
            raise ValueError(f"channels must be >= 2 for an embedded {mode!r} layer (theta and phi have "
                             f"channels // 2 outputs), got channels={channels}; use embed=False")
        self.theta: Optional[nn.Conv2d] = None
        self.phi: Optional[nn.Conv2d] = None
        if self.embed:
            factory = {"device": device, "dtype": dtype}
            self.theta = nn.Conv2d(channels, channels // 2, 1, bias=False, **factory)
            self.phi = nn.Conv2d(channels, channels // 2, 1, bias=False, **factory)
            nn.init.normal_(self.theta.weight, std=EMBED_INIT_STD)
            nn.init.normal_(self.phi.weight, std=EMBED_INIT_STD)
        # the softmax temperature: 1 / sqrt(d), d the width of theta and phi
        self.scale: Optional[float] = None
        if mode == "gaussian":
            self.scale = 1.0 / math.sqrt(channels // 2 if self.embed else channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.channels}, H, W) for NonLocalMeans({self.channels}), "
                             f"got {got}")
        if self.mode == "mean":
            return mean3x3(x)
        if self.mode == "median":
            return median3x3(x)
        theta, phi = (self.theta(x), self.phi(x)) if self.embed else (x, x)
        if self.mode == "gaussian":
            return nlm_gaussian(theta, phi, x, self.scale)
        return nlm_dot(theta, phi, x)

    def extra_repr(self) -> str:
        text = f"{self.channels}, mode={self.mode!r}"
        if self.mode in EMBEDDABLE_MODES:
            text += f", embed={self.embed}"
        return text


class DenoisingBlock(nn.Module):
    """x + BN(conv1x1(NonLocalMeans(x))): Xie et al.'s denoising block, the identity at
    initialisation (BN weight and bias 0). Arguments as NonLocalMeans."""

    def __init__(self, channels: int, mode: str = "gaussian", embed: Optional[bool] = None,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.nlm = NonLocalMeans(channels, mode, embed, **factory)
        self.conv = nn.Conv2d(channels, channels, 1, bias=False, **factory)
        self.bn = nn.BatchNorm2d(channels, **factory)
        # tensorpack's variance_scaling(2.0, fan_out), the convolutions' init in the original code
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    @property
    def channels(self) -> int:
        return self.nlm.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv(self.nlm(x)))


def model_stages(model: nn.Module) -> List[str]:
    """The names of the model's top-level stages: children called layer1, layer2, ..."""
    return [name for name, _ in model.named_children() if _STAGE_NAME.fullmatch(name)]


def _out_channels(name: str, stage: nn.Module) -> int:
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"stage {name!r} has no Conv2d to read its output channels from")
    return convs[-1].out_channels


def add_denoising_blocks(model: nn.Module, stages: Union[str, Iterable[str]], mode: str = "gaussian",
                         embed: Optional[bool] = None) -> nn.Module:
    """Puts a DenoisingBlock(mode, embed) after each named stage of `model`, in place, and
    returns the model: the block is appended to a stage that is an nn.Sequential (so that the
    stage's parameters keep their state_dict keys and a checkpoint trained without blocks
    still loads with strict=False), any other stage becomes nn.Sequential(stage, block); C is
    the out_channels of the stage's last Conv2d. The new blocks are the identity at initialisation,
    so the model computes what it computed before; they are created on the device and dtype of
    the stage's parameters and in its train/eval mode.

    stages: a name or names of top-level children "layer1", "layer2", ... (torchvision's
    ResNets, fastrobust's PreActResNet18 and WideResNet), or Xie et al.'s "res2" .. "res5" for
    layer1 .. layer4. Every name is checked before the model is changed.
    """
    if isinstance(stages, str):
        stages = [stages]
    try:
        requested = list(stages)
    except TypeError:
        raise ValueError(f"stages must be a stage name or an iterable of names, got {stages!r}") from None
    if not requested:
        raise ValueError("stages must name at least one stage")
    # checks the block's arguments once, before anything is changed
    mode = _check_mode(mode)
    _resolve_embed(mode, embed)
    available = model_stages(model)
    plan = []
    for given in requested:
        name = STAGE_ALIASES.get(given, given) if isinstance(given, str) else given
        if not isinstance(name, str) or name not in available:
            aliases = ", ".join(f"{a}={s}" for a, s in STAGE_ALIASES.items() if s in available)
            raise ValueError(f"unknown stage {given!r}; the model's stages are {available}"
                             + (f" (aliases {aliases})" if aliases else ""))
        if name in (n for n, _ in plan):
            raise ValueError(f"stage {name!r} is named twice in stages={requested!r}")
        stage = getattr(model, name)
        if isinstance(stage, (nn.ModuleList, nn.ModuleDict)):
            raise ValueError(f"stage {name!r} is a {type(stage).__name__} that the model's forward calls "
                             "piece by piece; a block cannot be put after it")
        plan.append((name, _out_channels(name, stage)))
    for name, channels in plan:
        stage = getattr(model, name)
        param = next(stage.parameters(), None)
        factory = {"device": param.device, "dtype": param.dtype} if param is not None else {}
        block = DenoisingBlock(channels, mode, embed, **factory).train(stage.training)
        if type(stage) is nn.Sequential:
            stage.append(block)  # the stage's own parameters keep their state_dict keys
            continue
        wrapped = nn.Sequential(stage, block)
        wrapped.training = stage.training  # not .train(): that would reset the stage's own submodules
        setattr(model, name, wrapped)
    return model
