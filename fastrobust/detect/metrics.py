"""Detection metrics that compare detectors at one operating point.

Scores: higher = more adversarial. A detector flags x when score(x) > threshold; the threshold
for a false-positive rate comes from clean validation scores (threshold_at_fpr). On test data:
detection rate (DR, the TPR on successful adversarial examples), FPR on the clean test images,
AUROC from the continuous scores, DR at the common FPR, and the attack's success rate against
classifier + detector (misclassified and not flagged).
"""
from __future__ import annotations

import math
from typing import Dict

import torch


def _scores(s, name: str) -> torch.Tensor:
    if not isinstance(s, torch.Tensor) or s.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of scores, got "
                         f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
    if s.numel() == 0:
        raise ValueError(f"{name} holds no scores")
    s = s.detach().double().cpu()
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} holds non-finite scores")
    return s


def threshold_at_fpr(clean_scores: torch.Tensor, fpr: float) -> float:
    """The smallest observed clean score t with at most floor(fpr * n) clean scores above it:
    flagging score > t keeps the false-positive rate on these scores at or below fpr."""
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be a number in [0, 1), got {fpr!r}")
    s = torch.sort(_scores(clean_scores, "clean_scores"), descending=True).values
    allowed = int(math.floor(fpr * s.numel() + 1e-9))
    return float(s[allowed])  # s[:allowed] lie above it (ties with s[allowed] stay below)


def auroc(clean_scores: torch.Tensor, adv_scores: torch.Tensor) -> float:
    """Area under the ROC curve: P(adv score > clean score) + P(tie) / 2 (Mann-Whitney U)."""
    c, a = _scores(clean_scores, "clean_scores"), _scores(adv_scores, "adv_scores")
    both = torch.cat([c, a])
    order = torch.argsort(both)
    ranks = torch.empty_like(both)
    sorted_vals = both[order]
    # average ranks of ties
    _, inverse, counts = torch.unique_consecutive(sorted_vals, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    starts = ends - counts.double() + 1
    ranks[order] = ((starts + ends) / 2)[inverse]
    u = ranks[c.numel():].sum() - a.numel() * (a.numel() + 1) / 2
    return float(u / (a.numel() * c.numel()))


def detection_summary(clean_scores: torch.Tensor, adv_scores: torch.Tensor, threshold: float) -> Dict[str, float]:
    """{"auroc", "detection_rate", "fpr"} at `threshold` (flag: score > threshold)."""
    c, a = _scores(clean_scores, "clean_scores"), _scores(adv_scores, "adv_scores")
    return {"auroc": auroc(c, a), "detection_rate": float((a > threshold).double().mean()),
            "fpr": float((c > threshold).double().mean())}


def success_against_detector(fooled: torch.Tensor, flagged: torch.Tensor) -> float:
    """The attack's success rate against classifier + detector: the share of attacked images
    that are misclassified and not flagged."""
    if fooled.shape != flagged.shape or fooled.dim() != 1:
        raise ValueError(f"fooled and flagged must be 1-D of one length, got {tuple(fooled.shape)} and "
                         f"{tuple(flagged.shape)}")
    return float((fooled.bool() & ~flagged.bool()).double().mean())
