"""Models by name:

    fastrobust.models.create("preact_resnet18", activation="sparta", denoise=("layer3", "gaussian"))

Every model takes the options num_classes, in_channels, activation (see
fastrobust.models.activations: "relu", "sparta", "silu", "softplus", "gelu"), denoise (None or
(stages, mode), e.g. ("layer3", "gaussian") or (["layer2", "layer3"], "median"):
DenoisingBlocks after those stages), cifs (True: ResNet18CIFS, resnet18 only), first_stride
(the stride of the first convolution; 2 halves the resolution) and mean/std (a Normalize layer
first, e.g. the data set's; none by default: the model sees [0, 1] pixels as it is given them).
Some models take more (list_models(), MODELS[name].options).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

from .ode_net import ODENet
from .preact_resnet import PreActResNet18
from .resnet import ResNet18
from .resnet_cifs import ResNet18CIFS
from .small_cnn import SmallCNN
from .survey_cnn import SurveyCNNCifar, SurveyCNNMnist
from .wide_resnet import WideResNet, wrn28_10, wrn34_10

COMMON_OPTIONS = ("num_classes", "in_channels", "activation", "denoise", "cifs", "first_stride", "mean", "std")


@dataclass(frozen=True)
class ModelSpec:
    """build(**options) makes the model; options are the names it accepts besides
    COMMON_OPTIONS; build_cifs (or None) makes the cifs=True variant."""
    build: Callable[..., nn.Module]
    description: str
    options: Tuple[str, ...] = ()
    build_cifs: Optional[Callable[..., nn.Module]] = None

    @property
    def all_options(self) -> Tuple[str, ...]:
        return COMMON_OPTIONS + self.options


MODELS: Dict[str, ModelSpec] = {
    "small_cnn": ModelSpec(SmallCNN, "two-conv CNN for 8x8 inputs (sklearn digits; any size works), "
                           "stages layer1, layer2; in_channels=1 by default", ("width",)),
    "preact_resnet18": ModelSpec(PreActResNet18, "PreAct ResNet-18 (CIFAR), stages layer1 .. layer4"),
    "resnet18": ModelSpec(ResNet18, "ResNet-18 with the CIFAR stem, stages layer1 .. layer4; "
                          "cifs=True gives ResNet18CIFS", build_cifs=ResNet18CIFS),
    "wrn28_10": ModelSpec(wrn28_10, "WideResNet-28-10 (CIFAR), stages layer1 .. layer3", ("dropout",)),
    "wrn34_10": ModelSpec(wrn34_10, "WideResNet-34-10 (CIFAR), stages layer1 .. layer3", ("dropout",)),
    "ode_net": ModelSpec(ODENet, "TisODE's MNIST net: feature extractor, ODE block (ode='tisode', 'vanilla') or "
                         "residual block (ode='none'), classifier; in_channels=1 by default",
                         ("width", "ode", "step", "method", "t_end", "steady_state")),
    "survey_cnn_mnist": ModelSpec(SurveyCNNMnist, "the detection survey's MNIST CNN (conv32 x2, pool, conv64 x2, pool, "
                                  "dense256 fc1, dense256 fc2, dense10), stages layer1, layer2", ("image_size",)),
    "survey_cnn_cifar": ModelSpec(SurveyCNNCifar, "the detection survey's CIFAR-10 CNN (VGG-like: conv-BN 64 x2, 128 x2, "
                                  "256 x2, 512, each stage pooled, dense512 fc1 without activation, dense10), stages "
                                  "layer1 .. layer4", ("image_size",)),
    "wide_resnet": ModelSpec(WideResNet, "WideResNet-depth-widen_factor (default 34-10), stages layer1 .. layer3",
                             ("depth", "widen_factor", "dropout")),
}


def list_models() -> List[str]:
    """The names create() takes, sorted."""
    return sorted(MODELS)


def create(name: str, **options) -> nn.Module:
    """The model `name` (one of list_models()) built with `options` (see the module docstring).
    Unknown names, unknown options and invalid values raise ValueError naming them."""
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    spec = MODELS[name]
    unknown = [key for key in options if key not in spec.all_options]
    if unknown:
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"for model {name!r}; its options are {', '.join(spec.all_options)}")
    cifs = options.pop("cifs", False)
    if not isinstance(cifs, bool):
        raise ValueError(f"cifs must be True or False, got {cifs!r}")
    build = spec.build
    if cifs:
        if spec.build_cifs is None:
            cifs_models = [n for n, s in MODELS.items() if s.build_cifs is not None]
            raise ValueError(f"cifs=True: model {name!r} has no CIFS variant (the layer4 CIFS placement exists "
                             f"for {', '.join(cifs_models)} only)")
        build = spec.build_cifs
    return build(**options)
