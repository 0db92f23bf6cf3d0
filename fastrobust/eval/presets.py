"""Named attack presets for `fastrobust.eval.evaluate`: name -> attack factory.

Every preset builds a fastrobust.attacks attack from (model, eps, norm, seed, autocast) and
optional keyword overrides. Step sizes are relative to eps (alpha = ratio * eps), so a preset
means the same at 8/255 (CIFAR L-inf), 0.3 (MNIST L-inf) or 0.5 (L2). norm is "linf" (default)
or "l2" for every preset; "l1" for pgd20, pgd100-restarts5 (sparse L1 steps, l1_sparsity 0.95),
apgd-ce, apgd-dlr, apgd-t (APGD-L1), square, fab and fab-t.

    name              attack                                           alpha      steps  restarts
    pgd20             PGD, CE, uniform random start                    eps/4      20     1
    pgd100-restarts5  PGD, CE, uniform random start, restarts folded   eps/10     100    5
    cw                PGD on the CW margin (kappa=50), random start    eps/4      30     1
    apgd-ce           APGD-CE (AutoAttack)                             2*eps (a)  100    1
    apgd-dlr          APGD-DLR (AutoAttack's "rand"/"plus" versions)   2*eps (a)  100    1
    apgd-t            APGD-T, DLR-targeted on the 9 runner-up classes  2*eps (a)  100    1 per class
    alt-ce-cw-dlr     AlternatingPGD, CE -> CW -> DLR at 1/3, 2/3      eps/4      100    1 (start at x)
    fat               FAT's early-stopped PGD, tau=0, noise 0.001      7/31 eps   10     1
    hypocritical      HypocriticalPGD (descent on CE, from x+0.01 N)   eps/4      10     1
    mifgsm            MI-FGSM, momentum 1, start at x, last iterate    eps/10     10     1
    transfer          MI-FGSM (as mifgsm) crafted on the surrogate     eps/10     10     1
                      model(s), judged by the model (evaluate(surrogate=...))
    fgsm              FGSM: one CE sign step of eps from x             eps        1      1
    tisode-fgsm       TisODE's official "FGSM" (see below)             eps        1 (b)  1
    tisode-pgd        TisODE's official "PGD" (see below)              eps/5      9 (b)  1
    square            Square (score-based, no gradients; AutoAttack)   -          5000 q 1
    fab               FAB, untargeted (minimal perturbation; AutoAttack) -        100    1
    fab-t             FAB-T, towards the 9 runner-up classes            -          100    1 per class
    deepfool          DeepFool, overshoot 0.02, 10 candidate classes   -          50     1
                      (the minimal perturbation, projected onto the eps-ball)
    cw-l2             Carlini-Wagner L2: Adam lr 0.01, c from 1e-3   -          1000   9 values of c
                      (L2 only; the smallest adversarial found, projected onto the eps-ball)
    hsj               HopSkipJump (decisions only), 100 probes x sqrt(t) -        40     1
                      (the smallest perturbation found, projected onto the eps-ball)

    (a) APGD's step size is adaptive: it starts at 2*eps and halves at the checkpoints.
    (b) sign steps after the clean point; every iterate is checked (the official code's
        max_iter 2 and 10, whose last update is never evaluated).

The cascade presets are untargeted: a point counts as broken when the model misclassifies the
attack's output. "hypocritical" is not part of the cascade: evaluate() runs it on the clean-
misclassified points and reports the hypocritical risk (the fraction the descent attack turns
correctly classified).

Parameter sources: PGD-20 at eps/4 with a random start and CW-30 are FAT's evaluation
(spec §4b); PGD-100 with restarts follows Madry et al.'s MNIST evaluation (100 steps) with the
restarts AutoAttack's protocol adds; APGD's defaults are AutoAttack's; the alternating schedule
is Antoniou et al.'s 3-loss variant with alpha=0.25 eps (§4c); "fat" is FAT's CIFAR-10
attack (eps=0.031, alpha=0.007: alpha = 7/31 eps; K=10; tau=0); "hypocritical" Tao et al.'s
(8/255 with 2/255 steps, 10 steps); "square" is AutoAttack's Square (p_init 0.8, 5000
queries, the margin loss, its schedule not rescaled); "fab" and "fab-t" AutoAttack's FAB
(alpha_max 0.1, eta 1.05, beta 0.9, 100 iterations; fab-t 9 target classes, 1 restart); "deepfool" is the original code's
(overshoot 0.02, 50 iterations, 10 candidate classes); "cw-l2" follows Carlini & Wagner's
code (9 binary-search steps, c from 1e-3, lr 0.01, kappa 0, early abort) with 1000 Adam steps
instead of its 10000; "tisode-fgsm" and "tisode-pgd" are the attacks of TisODE's official
evaluation (HanshuYAN/TisODE ad_attack/attk/cw_black.py; spec/methods-more.md §2.5): a
coordinate Adam with beta1 = beta2 = 0, i.e. the step -lr * g / (|g| + 1e-8) = -lr * sign(g)
on the clamped log-softmax margin max(log p_y - max_{j!=y} log p_j, 0), which equals the
logit margin: PGD on the CW loss with kappa 0 from x (a point stops moving once
misclassified), projected onto the L-inf ball and [0, 1], the clean point and each iterate
checked. "FGSM" is lr = eps with max_iter 1, which the code raises to 2 (one step); "PGD" is
10 iterations (9 steps) of lr = eps/5 (0.04 at 0.2, 0.06 at 0.3). Differences: the official
code takes log(softmax + 1e-30), whose gradient vanishes beyond margins of about 69 nats
(ours does not), and it counts an example with L2 distortion > 20 as a failure (unreachable
for MNIST at eps <= 0.5: the largest L2 is 0.5 * 28 = 14; not applied here); "hsj" is HopSkipJump's code's (40 iterations, 100 initial probes, at
most 10000, gamma 1, geometric step-size search).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from .._checks.pgd import ATTACK_NORMS, canonical_attack_norm
from ..attacks import (APGD, FAB, FATPGD, PGD, AlternatingPGD, Attack, CarliniWagnerL2, DeepFool, HopSkipJump,
                       HypocriticalPGD, MIFGSM, Square)

# Roles: "cascade" attacks try to break the clean-correct points; "hypocritical" attacks try
# to fix the clean-misclassified ones (reported as a risk, outside the cascade).
CASCADE = "cascade"
HYPOCRITICAL = "hypocritical"
# What a preset crafts its examples on: the evaluated model, or a surrogate (transfer attacks).
MODEL = "model"
SURROGATE = "surrogate"


@dataclass(frozen=True)
class Preset:
    """A named attack configuration.

    cls:      the attack class.
    params:   fixed keyword arguments of cls.
    relative: keyword arguments given as a multiple of eps (e.g. {"alpha": 0.25}).
    role:     CASCADE or HYPOCRITICAL.
    norms:    the threat models the attack supports.
    crafted_on: "model" (the attacked model, or evaluate's attack_model) or "surrogate"
              (a transfer attack: crafted on evaluate's surrogate, judged by the model).
    """

    name: str
    cls: Type[Attack]
    description: str
    params: Mapping[str, Any] = field(default_factory=dict)
    relative: Mapping[str, float] = field(default_factory=dict)
    role: str = CASCADE
    norms: Tuple[str, ...] = ("linf", "l2")
    crafted_on: str = MODEL

    def parameters(self, eps: float, norm: str = "linf", **overrides) -> Dict[str, Any]:
        """The keyword arguments the attack is built with (eps and relative values resolved)."""
        kwargs: Dict[str, Any] = {"eps": float(eps), "norm": norm}
        kwargs.update(self.params)
        kwargs.update({k: ratio * float(eps) for k, ratio in self.relative.items()})
        kwargs.update(overrides)
        return kwargs

    def build(self, model: nn.Module, eps: float, norm: str = "linf", seed: Optional[int] = None,
              autocast: Optional[torch.dtype] = None, **overrides) -> Attack:
        """The attack on `model`; overrides replace any parameter (steps=..., alpha=...)."""
        kwargs = self.parameters(eps, norm, **overrides)
        if canonical_attack_norm(kwargs["norm"], ATTACK_NORMS) not in self.norms:
            raise ValueError(f"norm: the attack preset {self.name!r} supports {', '.join(self.norms)} only, "
                             f"got {kwargs['norm']!r}")
        return self.cls(model, seed=seed, autocast=autocast, **kwargs)


def _presets(*presets: Preset) -> Dict[str, Preset]:
    return {p.name: p for p in presets}


PRESETS: Dict[str, Preset] = _presets(
    Preset("pgd20", PGD, "PGD-20, CE, random start, alpha=eps/4 (FAT's evaluation)",
           params={"steps": 20, "random_start": True, "restarts": 1, "loss": "ce", "keep": "success"},
           relative={"alpha": 0.25}, norms=ATTACK_NORMS),
    Preset("pgd100-restarts5", PGD, "PGD-100, CE, 5 random restarts (per-sample worst case), alpha=eps/10",
           params={"steps": 100, "random_start": True, "restarts": 5, "loss": "ce", "keep": "success"},
           relative={"alpha": 0.1}, norms=ATTACK_NORMS),
    Preset("cw", PGD, "CW-30: PGD on the CW margin clamped at kappa=50, random start, alpha=eps/4",
           params={"steps": 30, "random_start": True, "loss": "cw", "kappa": 50.0, "keep": "success"},
           relative={"alpha": 0.25}),
    Preset("apgd-ce", APGD, "APGD-CE, 100 iterations (AutoAttack)",
           params={"steps": 100, "loss": "ce", "restarts": 1}, norms=ATTACK_NORMS),
    Preset("apgd-dlr", APGD, "APGD-DLR, 100 iterations (AutoAttack)",
           params={"steps": 100, "loss": "dlr", "restarts": 1}, norms=ATTACK_NORMS),
    Preset("apgd-t", APGD, "APGD-T: targeted DLR towards the 9 runner-up classes, 100 iterations each (AutoAttack)",
           params={"steps": 100, "loss": "dlr", "targeted": True, "n_target_classes": 9, "restarts": 1},
           norms=ATTACK_NORMS),
    Preset("alt-ce-cw-dlr", AlternatingPGD, "Alternating-objectives PGD-100, CE -> CW -> DLR, alpha=eps/4, start at x",
           params={"steps": 100, "schedule": ("ce", "cw", "dlr"), "random_start": False},
           relative={"alpha": 0.25}),
    Preset("fat", FATPGD, "FAT's early-stopped PGD-10 (tau=0, omega=0.001), alpha=7/31 eps",
           params={"steps": 10, "tau": 0, "omega": 0.001, "random_start": True},
           relative={"alpha": 7 / 31}),
    Preset("mifgsm", MIFGSM, "MI-FGSM-10 (momentum 1.0, from x, last iterate), alpha=eps/10: the NIPS-2017 "
           "transfer attack, here white-box", params={"steps": 10, "momentum": 1.0, "keep": "last"},
           relative={"alpha": 0.1}),
    Preset("transfer", MIFGSM, "transfer attack: MI-FGSM-10 (momentum 1.0, alpha=eps/10) crafted on the "
           "surrogate model(s) (several: their averaged logits), judged by the model",
           params={"steps": 10, "momentum": 1.0, "keep": "last"}, relative={"alpha": 0.1}, crafted_on=SURROGATE),
    Preset("fgsm", PGD, "FGSM: one CE sign step of size eps from x (Goodfellow et al.)",
           params={"steps": 1, "random_start": False, "loss": "ce", "keep": "success"}, relative={"alpha": 1.0}),
    Preset("tisode-fgsm", PGD, "TisODE's official 'FGSM': one sign step of eps on the log-softmax margin "
           "(clamped at 0) from x, clean point and step checked", params={"steps": 1, "random_start": False,
                                                                            "loss": "cw", "kappa": 0.0,
                                                                            "keep": "success"},
           relative={"alpha": 1.0}, norms=("linf",)),
    Preset("tisode-pgd", PGD, "TisODE's official 'PGD': 9 sign steps of eps/5 on the log-softmax margin "
           "(clamped at 0) from x, every iterate checked", params={"steps": 9, "random_start": False,
                                                                     "loss": "cw", "kappa": 0.0, "keep": "success"},
           relative={"alpha": 0.2}, norms=("linf",)),
    Preset("square", Square, "Square attack, 5000 queries, p_init=0.8, margin loss (AutoAttack); images only",
           {"queries": 5000, "p_init": 0.8, "loss": "margin"}, norms=ATTACK_NORMS),
    Preset("fab", FAB, "FAB, untargeted, 100 iterations (AutoAttack)",
           {"steps": 100, "restarts": 1, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9}, norms=("linf", "l2", "l1")),
    Preset("fab-t", FAB, "FAB-T: towards the 9 runner-up classes, 100 iterations each (AutoAttack)",
           {"steps": 100, "restarts": 1, "targeted": True, "n_target_classes": 9, "alpha_max": 0.1, "eta": 1.05,
            "beta": 0.9}, norms=("linf", "l2", "l1")),
    Preset("deepfool", DeepFool, "DeepFool-50, overshoot 0.02, 10 candidate classes, projected onto the eps-ball",
           {"steps": 50, "overshoot": 0.02, "candidates": 10}),
    Preset("cw-l2", CarliniWagnerL2, "Carlini-Wagner L2: 9 binary-search steps x 1000 Adam steps (lr 0.01), "
           "c from 1e-3, kappa 0, early abort; L2 only, projected onto the eps-ball",
           {"steps": 1000, "binary_search_steps": 9, "lr": 0.01, "initial_const": 1e-3, "kappa": 0.0},
           norms=("l2",)),
    Preset("hsj", HopSkipJump, "HopSkipJump-40 (decision-based): 100 x sqrt(t) probes (at most 10000), gamma 1, "
           "projected onto the eps-ball", {"iterations": 40, "init_evals": 100, "max_evals": 10000, "gamma": 1.0}),
    Preset("hypocritical", HypocriticalPGD, "Hypocritical PGD-10 (CE descent), alpha=eps/4; risk on misclassified points",
           params={"steps": 10, "keep": "last"}, relative={"alpha": 0.25}, role=HYPOCRITICAL),
)

# The default set of evaluate(): PGD-20 first (its row is then PGD-20's own accuracy), then the
# two APGD losses AutoAttack's rand/plus versions use, each on the points still robust.
DEFAULT_ATTACKS: Tuple[str, ...] = ("pgd20", "apgd-ce", "apgd-dlr")


# Suites: a name for a whole cascade, expanded into its presets (with their budgets) in order.
# AutoAttack's versions (its set_version): "standard" APGD-CE, APGD-T (9 classes), FAB-T
# (9 classes), Square (5000 queries), one restart each; "plus" adds 5 restarts to APGD-CE,
# APGD-DLR and FAB and runs APGD-T and FAB-T last; "rand" (randomised defences) APGD-CE and
# APGD-DLR with each gradient averaged over 20 draws of the model (EOT).
SUITES: Dict[str, Tuple[Tuple[str, Mapping[str, Any]], ...]] = {
    "autoattack-standard": (("apgd-ce", {}), ("apgd-t", {}), ("fab-t", {}), ("square", {"queries": 5000})),
    "autoattack-plus": (("apgd-ce", {"restarts": 5}), ("apgd-dlr", {"restarts": 5}), ("fab", {"restarts": 5}),
                        ("square", {"queries": 5000}), ("apgd-t", {}), ("fab-t", {})),
    "autoattack-rand": (("apgd-ce", {"eot_iter": 20}), ("apgd-dlr", {"eot_iter": 20})),
}
# What AutoAttack changes for the L1 threat model: APGD's 3 eps / 2 eps / eps schedule
# (use_largereps), with 5 restarts of APGD-CE and 5 target classes for APGD-T in "standard".
SUITES_L1: Dict[str, Dict[str, Mapping[str, Any]]] = {
    "autoattack-standard": {"apgd-ce": {"restarts": 5, "eps_schedule": True},
                            "apgd-t": {"n_target_classes": 5, "eps_schedule": True}},
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        hint = " (a suite: see expand_suites)" if name in SUITES else ""
        raise ValueError(f"unknown attack preset {name!r}{hint}; presets are {', '.join(PRESETS)}") from None


def is_attack_name(name: str) -> bool:
    """A preset or a suite name."""
    return name in PRESETS or name in SUITES


def expand_suites(attacks: Sequence[Any], norm="linf") -> List[Any]:
    """attacks with every suite name replaced by its presets (their parameters overridden by
    the suite's budgets for this norm), in order; everything else is kept as it is."""
    l1 = canonical_attack_norm(norm, ATTACK_NORMS) == "l1"
    out: List[Any] = []
    for spec in attacks:
        if isinstance(spec, str) and spec in SUITES:
            for name, budget in SUITES[spec]:
                extra = SUITES_L1.get(spec, {}).get(name, {}) if l1 else {}
                out.append(replace(get_preset(name), params={**get_preset(name).params, **budget, **extra}))
        else:
            out.append(spec)
    return out


def make_attack(name: str, model: nn.Module, eps: float, norm: str = "linf", seed: Optional[int] = None,
                autocast: Optional[torch.dtype] = None, **overrides) -> Attack:
    """The attack of preset `name` on `model` (see the module docstring for the parameters)."""
    return get_preset(name).build(model, eps, norm, seed=seed, autocast=autocast, **overrides)


def register_preset(preset: Preset, replace: bool = False) -> None:
    """Adds a preset usable by name in evaluate()."""
    if preset.name in PRESETS and not replace:
        raise ValueError(f"preset {preset.name!r} exists (pass replace=True)")
    if preset.role not in (CASCADE, HYPOCRITICAL):
        raise ValueError(f"role must be {CASCADE!r} or {HYPOCRITICAL!r}, got {preset.role!r}")
    if preset.crafted_on not in (MODEL, SURROGATE):
        raise ValueError(f"crafted_on must be {MODEL!r} or {SURROGATE!r}, got {preset.crafted_on!r}")
    PRESETS[preset.name] = preset
