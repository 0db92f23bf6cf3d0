"""Plain models of the adversarial-robustness literature, taking inputs in [0, 1] (pass
mean/std to put a Normalize layer first)."""
from .cifs_adapter import CIFSLogits, cifs_joint_loss
from .preact_resnet import PreActResNet18
from .resnet_cifs import ResNet18CIFS
from .small_cnn import SmallCNN
from .wide_resnet import WideResNet, wrn34_10

__all__ = ["CIFSLogits", "cifs_joint_loss", "PreActResNet18", "ResNet18CIFS", "SmallCNN", "WideResNet", "wrn34_10"]
