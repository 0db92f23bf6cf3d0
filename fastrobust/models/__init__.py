"""Plain models of the adversarial-robustness literature, taking inputs in [0, 1] (pass
mean/std to put a Normalize layer first)."""
from .preact_resnet import PreActResNet18
from .small_cnn import SmallCNN
from .wide_resnet import WideResNet, wrn34_10

__all__ = ["PreActResNet18", "SmallCNN", "WideResNet", "wrn34_10"]
