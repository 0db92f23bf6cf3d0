"""FAT: friendly adversarial training with early-stopped PGD (Zhang et al., ICML 2020), and its
TRADES variant FAT-TRADES (spec/algorithms.md §4b; official FAT.py, FAT_for_TRADES.py)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch.nn.functional as F

from ...attacks import FATPGD, fat_tau
from .base import BatchOutput, Recipe, StepContext, register_recipe
from .losses import (GaussianStartFATPGD, attack_kwargs, check_bool, check_int, check_real, eval_logits,
                     float_logits, kl_batchmean, kl_objective, milestones_tuple)

# The official dynamic-tau schedules: (milestones, epochs of the official run).
FAT_SCHEDULE = ((50, 90), 120)            # tau = 0 for e <= 50, 1 for e <= 90, 2 after (FAT.py)
FAT_TRADES_SCHEDULE = ((30, 50, 70), 85)  # tau = 0, 1, 2, 3 (FAT_for_TRADES.py)


@register_recipe
class FAT(Recipe):
    """Friendly adversarial training: train on early-stopped PGD examples.

    Inner maximisation: FATPGD: K steps of size alpha; a sample that is misclassified with no
    steps left in its budget tau is frozen where it is (tau = extra steps allowed after the
    first misclassification; tau = 0 leaves a sample misclassified at the start untouched).
    Outer loss: CE(f(x_adv), y) in train mode (the official code reorders the batch; FATPGD
    keeps its order, so y is used as is).

    trades=True gives FAT-TRADES: the early-stopped attack maximises KL(p(x) || p(x_adv))
    from x + 0.001*N(0, 1) (the official loss_fn="kl", normal init), and the loss is
    CE(f(x), y) + beta * KL(p(x) || p(x_adv)) (batch mean), both forwards in train mode.

    Dynamic tau (the default): tau = number of milestones passed by the 1-based epoch
    (fastrobust.attacks.fat_tau). tau_milestones (1-based epochs) sets them; by default the
    official milestones are scaled to the run's length: FAT (50, 90) of 120 epochs,
    FAT-TRADES (30, 50, 70) of 85 epochs, each milestone m -> round(m * epochs / official
    epochs), so a 120-epoch FAT run uses exactly (50, 90). tau=<int> fixes tau instead
    (tau >= steps is PGD-AT with FAT's noise).

    Options (official CIFAR-10 defaults):
      eps=0.031, alpha=0.007, steps=10 (K)
      tau=None (dynamic) or a fixed int >= 0; tau_milestones=None or a sequence of epochs
      omega=None: the step noise omega*N(0, 1); 0.001 for FAT, 0.0 for FAT-TRADES (official)
      trades=False; beta=6.0 (FAT-TRADES only; giving beta without trades is an error)
    Randomness: the attack's seed comes from ctx (uniform start for FAT, Gaussian start for
    FAT-TRADES, step noise). extras: tau; for FAT-TRADES loss_natural, loss_robust.
    The schedule is a function of (epoch, epochs), so a resumed run needs no recipe state.
    """

    name = "fat"

    def __init__(self, eps: float = 0.031, alpha: Optional[float] = None, steps: int = 10,
                 tau: Optional[int] = None, tau_milestones: Optional[Sequence[int]] = None,
                 omega: Optional[float] = None, trades: bool = False, beta: Optional[float] = None):
        self.eps = check_real(eps, "eps")
        self.alpha = 0.007 if alpha is None else check_real(alpha, "alpha")
        self.steps = check_int(steps, "steps", 0)
        self.trades = check_bool(trades, "trades")
        if tau is not None and tau_milestones is not None:
            raise ValueError("give either tau (fixed) or tau_milestones (dynamic), not both")
        self.tau = None if tau is None else check_int(tau, "tau", 0)
        self.tau_milestones = None if tau_milestones is None else milestones_tuple(tau_milestones, "tau_milestones")
        self.omega = (0.0 if trades else 0.001) if omega is None else check_real(omega, "omega")
        if beta is not None and not trades:
            raise ValueError("beta is the FAT-TRADES weight: give it with trades=True")
        self.beta = 6.0 if beta is None else check_real(beta, "beta")

    def milestones(self, epochs: int) -> Tuple[int, ...]:
        """The milestones (1-based epochs) of a run of `epochs` epochs."""
        if self.tau_milestones is not None:
            return self.tau_milestones
        official, official_epochs = FAT_TRADES_SCHEDULE if self.trades else FAT_SCHEDULE
        return tuple(int(round(m * epochs / official_epochs)) for m in official)

    def depends_on_total_epochs(self) -> bool:
        """The default tau milestones are scaled to the run's epochs."""
        return self.tau is None and self.tau_milestones is None

    def tau_at(self, epoch: int, epochs: int) -> int:
        """tau of the 0-based `epoch` of a run of `epochs` epochs."""
        if self.tau is not None:
            return self.tau
        return fat_tau(epoch + 1, self.milestones(epochs))

    def batch_loss(self, model, x, y, ctx: StepContext) -> BatchOutput:
        tau = self.tau_at(ctx.epoch, ctx.epochs)
        common = dict(eps=self.eps, alpha=self.alpha, steps=self.steps, tau=tau, omega=self.omega,
                      **attack_kwargs(ctx))
        if not self.trades:
            x_adv = FATPGD(model, random_start=True, **common)(x, y)
            adv_logits = model(x_adv)
            loss = F.cross_entropy(float_logits(adv_logits), y)
            return BatchOutput(loss, None, adv_logits.detach(), {"tau": float(tau)})
        objective = kl_objective(eval_logits(model, x, ctx.autocast_dtype))
        x_adv = GaussianStartFATPGD(model, loss=objective, **common)(x, y)
        logits = model(x)
        adv_logits = model(x_adv)
        natural = F.cross_entropy(float_logits(logits), y)
        robust = kl_batchmean(logits, adv_logits)
        return BatchOutput(natural + self.beta * robust, logits.detach(), adv_logits.detach(),
                           {"tau": float(tau), "loss_natural": natural.detach(), "loss_robust": robust.detach()})

    def options(self) -> Dict[str, Any]:
        out = dict(eps=self.eps, alpha=self.alpha, steps=self.steps, tau=self.tau,
                   tau_milestones=self.tau_milestones, omega=self.omega, trades=self.trades)
        if self.trades:
            out["beta"] = self.beta
        return out
