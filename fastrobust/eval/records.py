"""What evaluate() returns: the report of a robustness evaluation and one row per attack, with
their JSON form and plain-text summary."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from .inference import jsonable
from .noise import NoiseResult
from .presets import HYPOCRITICAL


@dataclass
class AttackReport:
    """One attack's row of the report.

    kind:             "cascade" or "hypocritical".
    points_attacked:  points given to the attack (cascade: still robust; hypocritical:
                      clean-misclassified).
    successes:        of those, the points the attack broke (hypocritical: fixed).
    robust_accuracy:  cascade: fraction of all n points still robust after this attack.
    accuracy_alone:   cascade=False only: the fraction of all n points this attack alone leaves robust.
    hypocritical_risk: hypocritical only: successes / points_attacked (None without such points).
    time_s:           wall time of the attack (synchronised on CUDA at its end).
    forwards, backwards: model forward / input-gradient passes in sample-passes (rows), from
                      the attacks' counts (restarts and target classes included), plus one
                      forward per point where a separate model judges (attack_model); with an
                      EOT attack model each row is `samples` rows of the inner model.
    images_per_s:     points_attacked / time_s.
    nonfinite:        points whose attack met a non-finite loss (NaN / inf) at some iterate; such
                      iterates are never kept nor counted as breaks (see AttackResult.nonfinite).
                      A model that is not finite on part of the threat ball can hide its
                      weakness there: a non-zero count deserves a look.
    params:           the attack's parameters (preset name, class, keyword arguments).
    success:          bool (n,) on the CPU: which points the attack broke (fixed), False for
                      the points it did not attack. Not in to_dict() unless samples=True.
    """

    name: str
    kind: str
    points_attacked: int
    successes: int
    robust_accuracy: Optional[float]
    time_s: float
    forwards: int
    backwards: int
    images_per_s: Optional[float]
    params: Dict[str, Any] = field(default_factory=dict)
    nonfinite: int = 0
    accuracy_alone: Optional[float] = None
    hypocritical_risk: Optional[float] = None
    success: Optional[torch.Tensor] = field(default=None, repr=False)

    def to_dict(self, samples: bool = False) -> Dict[str, Any]:
        out = {k: getattr(self, k) for k in ("name", "kind", "points_attacked", "successes", "robust_accuracy",
                                             "accuracy_alone", "hypocritical_risk", "time_s", "forwards",
                                             "backwards", "images_per_s", "nonfinite")}
        out["params"] = jsonable(self.params)
        if samples and self.success is not None:
            out["success"] = self.success.tolist()
        return out


@dataclass
class EvalReport:
    """What evaluate() returns.

    n:                 points evaluated (the first n of the data).
    clean_accuracy:    fraction of the n points classified correctly.
    robust_accuracy:   fraction robust against every cascade attack (clean_accuracy if none).
    attacks:           one AttackReport per attack, in the order run.
    checks:            gradient-masking CheckResults (empty when not run).
    clean_correct, robust: bool (n,) on the CPU, per point.
    noise:             NoiseResults of evaluate(noise=...): accuracy under Gaussian noise per
                       sigma (not part of the robust accuracy).
    x_adv:             with evaluate(keep_adversarial=True): the inputs with every point a
                       cascade attack broke replaced by its adversarial example (the first
                       attack's that broke it), on the CPU; None otherwise.
    metadata:          model, data, attacks, eps, seed, versions, git commit, device, ranks (the
                       processes that shared the work), ...
    """

    n: int
    eps: float
    norm: str
    seed: Optional[int]
    cascade: bool
    clean_accuracy: float
    robust_accuracy: float
    attacks: List[AttackReport]
    clean_time_s: float
    total_time_s: float
    checks: List[Any] = field(default_factory=list)
    noise: List[NoiseResult] = field(default_factory=list)
    metadata: Dict[str, Any] = field(default_factory=dict)
    clean_correct: Optional[torch.Tensor] = field(default=None, repr=False)
    robust: Optional[torch.Tensor] = field(default=None, repr=False)
    x_adv: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def hypocritical_risk(self) -> Optional[float]:
        """The risk of the (last) hypocritical attack, None if none ran."""
        risks = [a.hypocritical_risk for a in self.attacks if a.kind == HYPOCRITICAL]
        return risks[-1] if risks else None

    @property
    def warnings(self) -> List[Any]:
        """The checks that fired."""
        return [c for c in self.checks if c.passed is False]

    def attack(self, name: str) -> AttackReport:
        for a in self.attacks:
            if a.name == name:
                return a
        raise KeyError(name)

    def to_dict(self, samples: bool = False) -> Dict[str, Any]:
        """A JSON-ready dict; samples=True adds the per-point masks."""
        out: Dict[str, Any] = {
            "n": self.n, "eps": self.eps, "norm": self.norm, "seed": self.seed, "cascade": self.cascade,
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
            "hypocritical_risk": self.hypocritical_risk,
            "clean_time_s": self.clean_time_s, "total_time_s": self.total_time_s,
            "attacks": [a.to_dict(samples) for a in self.attacks],
            "checks": [c.to_dict() for c in self.checks],
            "noise": [r.to_dict() for r in self.noise],
            "metadata": jsonable(self.metadata),
        }
        if samples and self.clean_correct is not None:
            out["clean_correct"] = self.clean_correct.tolist()
            out["robust"] = self.robust.tolist()
        return out

    def summary(self) -> str:
        """A plain-text table (as AutoAttack's log)."""
        lines = [f"clean accuracy: {100 * self.clean_accuracy:.2f}% ({self.n} points, {self.clean_time_s:.1f} s)"]
        for a in self.attacks:
            if a.kind == HYPOCRITICAL:
                risk = "n/a" if a.hypocritical_risk is None else f"{100 * a.hypocritical_risk:.2f}%"
                lines.append(f"hypocritical risk ({a.name}): {risk} of {a.points_attacked} misclassified points "
                             f"({a.time_s:.1f} s)")
            else:
                alone = "" if a.accuracy_alone is None else f", alone {100 * a.accuracy_alone:.2f}%"
                lines.append(f"robust accuracy after {a.name}: {100 * a.robust_accuracy:.2f}%{alone} "
                             f"({a.points_attacked} attacked, {a.time_s:.1f} s, {_rate(a.images_per_s)} img/s)")
        lines.append(f"robust accuracy: {100 * self.robust_accuracy:.2f}% (total {self.total_time_s:.1f} s)")
        lines.extend(noise_line(r) for r in self.noise)
        for c in self.checks:
            status = "skipped" if c.passed is None else ("ok" if c.passed else "WARNING")
            lines.append(f"check {c.name}: {status}: {c.message}")
        return "\n".join(lines)


def noise_line(r: NoiseResult) -> str:
    of_clean = "" if r.accuracy_of_clean_correct is None else \
        f", {100 * r.accuracy_of_clean_correct:.2f}% of the clean-correct"
    return f"accuracy under Gaussian noise sigma={r.sigma:.4g}: {100 * r.accuracy:.2f}%{of_clean}"


def _rate(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.0f}"
