"""Adversarial-example detectors behind one interface (fastrobust.detect.base.Detector), the
metrics that compare them at one operating point, and the survey's protocol without its leaks
(spec: Aldahdooh et al., "Adversarial example detection for DNN models: a review and
experimental comparison").

    supervised (fitted with adversarial examples):  KDBU, LID, NSS
    unsupervised (clean data only):                 FeatureSqueezing, MagNet, DNR, SFAD, NIC

fastrobust.detect.protocol runs the survey's protocol (correct images only, thresholds from
validation images, nothing fitted on the test split); fastrobust.detect.adaptive attacks a
classifier and a detector together (combined loss with a per-row lambda search, the detector
as an extra class, logit matching; random search for detectors without gradients).
"""
from .adaptive import DetectorAware, adaptive_attack
from .base import Detector, NotFittedError
from .dnr import DNR
from .kd_bu import KDBU
from .lid import LID
from .magnet import MagNet
from .metrics import auroc, detection_summary, success_against_detector, threshold_at_fpr
from .nic import NIC
from .nss import NSS
from .sfad import SFAD
from .squeeze import FeatureSqueezing

DETECTORS = {cls.name: cls for cls in (KDBU, LID, NSS, FeatureSqueezing, MagNet, DNR, SFAD, NIC)}

__all__ = ["DETECTORS", "DNR", "Detector", "DetectorAware", "FeatureSqueezing", "KDBU", "LID", "MagNet", "NIC", "NSS",
           "NotFittedError", "SFAD", "adaptive_attack", "auroc", "detection_summary", "success_against_detector", "threshold_at_fpr"]
