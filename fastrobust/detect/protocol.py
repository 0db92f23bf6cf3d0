"""The survey's evaluation protocol (methods-more.md §1.2) with its leaks removed (§1.7).

    data = detection_split(model, x_train, y_train, x_test, y_test)        # correct images only
    report = evaluate_detectors(model, {"fs": FeatureSqueezing(), ...}, attacks, data)

- Only images the classifier gets right, on both sides (the survey's filter).
- Every detector is fitted on the training split's images and its threshold set at the common
  FPR on a held-out validation part of the training split: nothing fitted ever sees the test
  split (the survey fitted KD+BU's and LID's scalers, DNR's and SFAD's thresholds and NSS's
  test set on test data).
- Supervised detectors (KD+BU, LID) get one instance per attack, fitted on that attack's
  successful examples of the training images (as the survey); NSS one instance for all
  attacks, fitted on PGD-L-inf examples at the survey's mixed radii (nss_training_set).
- Per detector and attack, on the test split: AUROC of the successful adversarial examples
  against the clean versions of the same images (the survey's `success` row), the detection
  rate (DR) on them and the FPR on all clean test images at the validation threshold, the
  attack's success rate on the classifier alone and against classifier + detector
  (misclassified and not flagged), and ROC points for the plots.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .base import Detector
from .metrics import auroc, success_against_detector

# the survey's PGD-L-inf radii for NSS training and the share of the images at each
# (nss/MSCN `pgd_percent`: MNIST; "others" for colour data sets)
NSS_EPS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 5 / 16, 1 / 2)
NSS_SHARE = {"mnist": (0.02, 0.10, 0.18, 0.30, 0.30, 0.10), "others": (0.3, 0.3, 0.1, 0.1, 0.1, 0.1)}
ROC_POINTS = 101


@dataclass
class DetectionData:
    """Correctly classified images: fit (detectors), val (thresholds), test (metrics)."""
    fit_x: torch.Tensor
    fit_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    from ..eval.inference import logits_of

    with torch.no_grad():
        return torch.cat([logits_of(model(x[i:i + batch_size])).argmax(1) for i in range(0, len(x), batch_size)])


def detection_split(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                    y_test: torch.Tensor, val_fraction: float = 0.2, seed: int = 0,
                    max_fit: Optional[int] = None) -> DetectionData:
    """The correctly classified images of each split; a random val_fraction of the training
    ones held out for thresholds; max_fit caps the fitting images (cost)."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    model.eval()
    keep = predictions(model, x_train) == y_train
    x_train, y_train = x_train[keep], y_train[keep]
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed)).to(x_train.device)
    n_val = max(1, int(round(val_fraction * len(x_train))))
    val, fit = perm[:n_val], perm[n_val:]
    if max_fit is not None:
        fit = fit[:max_fit]
    keep_test = predictions(model, x_test) == y_test
    return DetectionData(x_train[fit], y_train[fit], x_train[val], y_train[val], x_test[keep_test],
                         y_test[keep_test])


def nss_training_set(model: nn.Module, x: torch.Tensor, y: torch.Tensor, share: Sequence[float],
                     seed: int = 0) -> torch.Tensor:
    """PGD-L-inf examples of x, each row at one of NSS_EPS, the rows split by `share` (disjoint
    index blocks, as the survey; shares normalised to the rows there are)."""
    from ..attacks import PGD

    if len(share) != len(NSS_EPS):
        raise ValueError(f"share must hold {len(NSS_EPS)} fractions, got {share!r}")
    total = float(sum(share))
    bounds = torch.tensor([0.0] + list(share)).cumsum(0) / total * len(x)
    bounds = bounds.round().long().tolist()
    out = x.clone()
    for eps, lo, hi in zip(NSS_EPS, bounds[:-1], bounds[1:]):
        if hi > lo:
            out[lo:hi] = PGD(model, eps=eps, alpha=0.01, steps=100, random_start=False, seed=seed)(x[lo:hi], y[lo:hi])
    return out


def _scores(det: Detector, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([det.score(x[i:i + batch_size]).detach().float().cpu() for i in range(0, len(x), batch_size)])


def roc_points(clean: torch.Tensor, adv: torch.Tensor, n: int = ROC_POINTS) -> Dict[str, List[float]]:
    """(fpr, tpr) at n thresholds spread over the score quantiles (for the plots)."""
    both = torch.cat([clean, adv]).double()
    ts = torch.quantile(both, torch.linspace(0, 1, n, dtype=torch.float64))
    ts = torch.cat([ts, torch.tensor([both.min() - 1], dtype=torch.float64)])
    return {"fpr": [float((clean.double() > t).double().mean()) for t in ts],
            "tpr": [float((adv.double() > t).double().mean()) for t in ts]}


def _row(clean: torch.Tensor, adv: torch.Tensor, fooled: torch.Tensor, threshold: float) -> Dict[str, object]:
    flagged = adv > threshold
    ok = fooled.cpu()
    row = {"n_attacked": int(len(adv)), "n_success": int(ok.sum()), "attack_success": float(ok.double().mean()),
           "fpr": float((clean > threshold).double().mean()),
           "success_vs_detector": success_against_detector(ok, flagged)}
    if ok.any():
        row.update(auroc=auroc(clean[ok], adv[ok]), detection_rate=float(flagged[ok].double().mean()),
                   roc=roc_points(clean[ok], adv[ok]))
    else:
        row.update(auroc=None, detection_rate=None, roc=None)
    return row


def evaluate_detectors(model: nn.Module, detectors: Dict[str, Detector],
                       attacks: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], data: DetectionData,
                       *, fpr: float = 0.05, seed: int = 0, nss_share: Optional[Sequence[float]] = None,
                       adaptive: Optional[Callable] = None, adaptive_n: Optional[int] = None,
                       distributed: bool = False, progress: Callable[[str], None] = lambda message: None
                       ) -> Dict[str, object]:
    """The detection report: {"fpr_target", "attacks": {name: {"success": ...}}, "detectors":
    {detector: {"threshold", "per_attack_fit", "attacks": {attack: row}}}}.

    adaptive(model, detector, x, y) -> dict with a bool per-row "success" (misclassified and not
    flagged): run on the first adaptive_n test images for every detector (fitted on the first
    attack where it is supervised).

    distributed: the ranks of the caller's torch.distributed process group share the work, whole
    jobs each: every attack on the test images (and on the fitting images, for the supervised
    detectors), then every detector's fitting, scoring and adaptive attack. The jobs seed
    themselves, so every rank returns the report of a single process."""
    from ..distributed import run_shared
    from ..eval.shards import check_same_evaluation, process_group

    model.eval()
    ranks = process_group(distributed, data.test_x.device)
    nss_share = nss_share or NSS_SHARE["mnist" if data.fit_x.shape[1] == 1 else "others"]
    check_same_evaluation(_signature(detectors, attacks, data, fpr, seed, nss_share, adaptive, adaptive_n), ranks)

    def shared(tensor: torch.Tensor) -> torch.Tensor:  # what travels between ranks is on the CPU
        return tensor.cpu() if ranks.enabled else tensor

    def attack(job):
        name, split = job
        progress(f"attack {name}" + (" (fitting images)" if split == "fit" else ""))
        x, y = (data.test_x, data.test_y) if split == "test" else (data.fit_x, data.fit_y)
        return shared(attacks[name](x, y))

    needs_fit_examples = any(d.fits_per_attack for d in detectors.values())
    jobs = [(name, "test") for name in attacks] + [(name, "fit") for name in attacks if needs_fit_examples]
    adv = {job: x.to(data.test_x.device) for job, x in run_shared(jobs, attack, ranks).items()}
    adv_test = {name: adv[name, "test"] for name in attacks}
    adv_fit = {name: adv[name, "fit"] for name in attacks if needs_fit_examples}
    fooled = {name: (predictions(model, x) != data.test_y).cpu() for name, x in adv_test.items()}

    def entry(det_name: str) -> Dict[str, object]:
        progress(f"detector {det_name}")
        template = detectors[det_name]
        instances = _fitted_instances(model, template, data, adv_fit, list(attacks), nss_share, seed, fpr)
        rows = {name: _row(_scores(instances[name], data.test_x), _scores(instances[name], adv_test[name]),
                           fooled[name], instances[name].threshold) for name in attacks}
        out = {"per_attack_fit": template.fits_per_attack,
               "threshold": {name: instances[name].threshold for name in attacks}, "attacks": rows}
        if adaptive is not None:
            out["adaptive"] = _adaptive_entry(adaptive, model, instances[next(iter(attacks))], data, adaptive_n)
        return out

    return {"fpr_target": fpr, "n_fit": len(data.fit_x), "n_val": len(data.val_x), "n_test": len(data.test_x),
            "attacks": {name: {"success": float(f.double().mean())} for name, f in fooled.items()},
            "detectors": run_shared(list(detectors), entry, ranks)}


def _adaptive_entry(adaptive: Callable, model: nn.Module, det: Detector, data: DetectionData,
                    adaptive_n: Optional[int]) -> Dict[str, object]:
    n = len(data.test_x) if adaptive_n is None else min(adaptive_n, len(data.test_x))
    info = adaptive(model, det, data.test_x[:n], data.test_y[:n])
    return {"n_attacked": n, "success_vs_detector": float(info["success"].double().mean()),
            "fooled": float(info["fooled"].double().mean()),
            "detection_rate": float(info["flagged"][info["fooled"]].double().mean()) if info["fooled"].any() else None}


def _signature(detectors, attacks, data: DetectionData, *options) -> tuple:
    """What every rank of a distributed evaluation must agree on: the detectors and attacks by
    name and kind, the images (shapes and sums) and the options."""
    images = tuple((tuple(t.shape), float(t.double().sum())) for t in vars(data).values())
    return (tuple((k, type(d).__name__) for k, d in detectors.items()), tuple(attacks), images,
            tuple(o if o is None or isinstance(o, (int, float, str, tuple, list)) else type(o).__name__
                  for o in options))


def _fitted_instances(model, template: Detector, data: DetectionData, adv_fit, attack_names, nss_share, seed, fpr
                      ) -> Dict[str, Detector]:
    """attack name -> the fitted detector scoring that attack's examples (one shared instance
    unless the detector is supervised per attack); thresholds set on the validation images."""
    def fitted(x_adv_source: Optional[str]) -> Detector:
        det = copy.deepcopy(template)
        g = torch.Generator().manual_seed(seed)
        if not det.supervised:
            det.fit(model, data.fit_x, data.fit_y, generator=g)
        elif not det.fits_per_attack:  # NSS: its own mixed-radius PGD examples
            x_adv = nss_training_set(model, data.fit_x, data.fit_y, nss_share, seed)
            ok = predictions(model, x_adv) != data.fit_y
            det.fit(model, data.fit_x[ok], data.fit_y[ok], x_adv=x_adv[ok], generator=g)
        else:
            x_adv = adv_fit[x_adv_source]
            ok = predictions(model, x_adv) != data.fit_y
            if int(ok.sum()) < 2:
                raise ValueError(f"{det.name}: the {x_adv_source} attack succeeded on {int(ok.sum())} training "
                                 "images; a supervised detector needs adversarial examples to fit on")
            det.fit(model, data.fit_x[ok], data.fit_y[ok], x_adv=x_adv[ok], generator=g)
        det.threshold_at_fpr(data.val_x, fpr)
        return det

    if template.fits_per_attack:
        return {name: fitted(name) for name in attack_names}
    shared = fitted(None)
    return {name: shared for name in attack_names}
