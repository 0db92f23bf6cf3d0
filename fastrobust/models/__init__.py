"""Plain models of the adversarial-robustness literature, taking inputs in [0, 1] (pass
mean/std to put a Normalize layer first); by name through create() (see .registry)."""
from .activations import ACTIVATIONS, make_activation
from .cifs_adapter import CIFSLogits, cifs_joint_loss
from .denoised import Denoised
from .dunet import DUNet
from .ensemble import LogitEnsemble
from .ode_net import ODENet
from .preact_resnet import PreActResNet18
from .registry import MODELS, create, list_models
from .resnet import ResNet18
from .resnet_cifs import ResNet18CIFS
from .small_cnn import SmallCNN
from .wide_resnet import WideResNet, wrn28_10, wrn34_10

__all__ = ["ACTIVATIONS", "CIFSLogits", "DUNet", "Denoised", "LogitEnsemble", "MODELS", "ODENet", "PreActResNet18", "ResNet18",
           "ResNet18CIFS", "SmallCNN", "WideResNet", "cifs_joint_loss", "create", "list_models", "make_activation",
           "wrn28_10", "wrn34_10"]
