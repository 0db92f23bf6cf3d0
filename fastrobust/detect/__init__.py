"""Adversarial-example detectors behind one interface (fastrobust.detect.base.Detector), the
metrics that compare them at one operating point, and the survey's protocol without its leaks
(spec: Aldahdooh et al., "Adversarial example detection for DNN models: a review and
experimental comparison").

    supervised (fitted with adversarial examples):  KDBU, LID, NSS
    unsupervised (clean data only):                 FeatureSqueezing, MagNet, DNR, NIC
"""
from .base import Detector, NotFittedError
from .dnr import DNR
from .kd_bu import KDBU
from .lid import LID
from .magnet import MagNet
from .metrics import auroc, detection_summary, success_against_detector, threshold_at_fpr
from .nic import NIC
from .nss import NSS
from .squeeze import FeatureSqueezing

DETECTORS = {cls.name: cls for cls in (KDBU, LID, NSS, FeatureSqueezing, MagNet, DNR, NIC)}

__all__ = ["DETECTORS", "DNR", "Detector", "FeatureSqueezing", "KDBU", "LID", "MagNet", "NIC", "NSS",
           "NotFittedError", "auroc", "detection_summary", "success_against_detector", "threshold_at_fpr"]
