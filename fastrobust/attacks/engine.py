"""The attack engine: the Attack base class (argument checks, eval mode, row groups folded into
the batch, compaction between passes, per-sample worst case) and the per-call loop context."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import nn

from .._checks.pgd import canonical_attack_norm
from .graph import StepRunner
from .model_runner import ModelRunner, eval_mode
from .objectives import objective, reached
from .result import AttackResult
from .rows import RowOutcome, Rows, fold, maths_dtype, merge_groups, per_row_values, usable_start
from .validation import (Scalar, check_autocast, check_box, check_call, check_count, check_model,
                         check_per_sample, check_radius)

_warned_cuda_graph_on_cpu = False


def _warn_cuda_graph_on_cpu() -> None:
    global _warned_cuda_graph_on_cpu
    if not _warned_cuda_graph_on_cpu:
        _warned_cuda_graph_on_cpu = True
        warnings.warn("fastrobust attacks: cuda_graph=True needs CUDA tensors; running uncaptured",
                      RuntimeWarning, stacklevel=4)


class LoopContext:
    """What an attack pass needs besides its rows: the model runner, CUDA-graph capture, and
    the forward/backward counts (Python ints from the known shapes: no host sync)."""

    def __init__(self, model: ModelRunner, capture: bool):
        self.model = model
        self.capture = capture
        self.forwards = 0
        self.backwards = 0

    def count(self, rows: int, backward: bool) -> None:
        self.forwards += rows
        if backward:
            self.backwards += rows

    def step_runner(self, state) -> StepRunner:
        return StepRunner(state, self.capture)


@dataclass
class Plan:
    """How one call is split into row groups.

    goal:    what success means for this call (see objectives.reached).
    targets: (groups, B) target class of every group and sample, or None.
    initial: (loss, success) per sample at the clean point when the attack checks it first
             (APGD, as AutoAttack): samples already successful there keep x and are not attacked.
    """

    groups: int
    goal: str
    targets: Optional[torch.Tensor] = None
    initial: Optional[Tuple[torch.Tensor, torch.Tensor]] = None


class Attack:
    """Base of the attacks. `atk(x, y)` returns x_adv; `atk.run(x, y)` an AttackResult.

    Common keyword arguments:
      eps:           radius of the threat ball in input space [lo, hi] (a number, or one value
                     per sample as a 1-D tensor).
      norm:          "linf" (or inf) or "l2" (or 2); "l1" (or 1) where the attack supports it
                     (its `norms`).
      lo, hi:        the input box; x must lie in it (normalisation belongs inside the model).
      seed:          int for reproducible random starts/noise; None draws one from torch's RNG.
      autocast:      None, torch.bfloat16 or torch.float16: the model runs under torch.autocast
                     of x's device type; losses are computed from the logits in float32
                     (float64 for float64 inputs).
      channels_last: 4-D inputs are attacked in channels_last memory format.
      cuda_graph:    capture one whole step (forward, input gradient, best-point update, fused
                     step) in a CUDA graph and replay it; CUDA tensors only (warns once and runs
                     uncaptured otherwise). Each call captures anew (three warm-up steps and a
                     capture): on an H200 that made PGD-10 calls 1.08-1.96x slower than
                     uncaptured ones (benchmarks/results/pgd-cuda.json), so it pays only for
                     long attacks on small models.
    The model is put in eval mode for the attack and each submodule's mode restored after.
    """

    goal = "fooled"
    norms = ("linf", "l2")  # the threat models the attack supports
    restarts = 1
    restart_batch: Union[int, str, None] = "auto"

    def __init__(self, model: nn.Module, *, eps: Scalar, norm="linf", lo: float = 0.0, hi: float = 1.0,
                 seed: Optional[int] = None, autocast: Optional[torch.dtype] = None,
                 channels_last: bool = False, cuda_graph: bool = False):
        self.model = check_model(model)
        self.eps = check_radius(eps, "eps")
        self.norm = canonical_attack_norm(norm, self.norms)
        check_box(lo, hi)
        self.lo, self.hi = float(lo), float(hi)
        self.seed = None if seed is None else check_count(seed, "seed", 0)
        self.autocast = check_autocast(autocast)
        self.channels_last = bool(channels_last)
        self.cuda_graph = bool(cuda_graph)
        self.alpha: Optional[Scalar] = None
        self.kappa = float("inf")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._attack(x, y, targets, evaluate=False)[0]

    def run(self, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None) -> AttackResult:
        x_adv, outcome, ctx = self._attack(x, y, targets, evaluate=True)
        return AttackResult(x_adv, outcome.success, outcome.loss, ctx.forwards, ctx.backwards, outcome.nonfinite)

    # -- what each attack defines ------------------------------------------------------------
    def _check_targets(self, targets: Optional[torch.Tensor]) -> None:
        if targets is not None:
            raise ValueError(f"targets: {type(self).__name__} is untargeted")

    def _plan(self, ctx: LoopContext, x0: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor]) -> Plan:
        """Default: `restarts` groups, the same targets (if any) in each."""
        return Plan(self.restarts, self.goal, None if targets is None else targets.expand(self.restarts, -1))

    def _plan_after_clean_check(self, ctx: LoopContext, x0: torch.Tensor, y: torch.Tensor,
                                targets: Optional[torch.Tensor], kind: str) -> Plan:
        """`restarts` groups that run only on the samples whose clean point misses the goal
        (one forward on the clean points, as AutoAttack's attacks begin); the others keep x.
        kind: the objective (a loss name) recorded at the clean points."""
        output = ctx.model.output(x0)
        ctx.count(x0.shape[0], backward=False)
        initial = (objective(kind, output, y, targets), reached(self.goal, output.logits, y, targets))
        return Plan(self.restarts, self.goal, None if targets is None else targets.expand(self.restarts, -1), initial)

    def _run_rows(self, ctx: LoopContext, rows: Rows, evaluate: bool) -> RowOutcome:
        """One pass of the attack loop over `rows`; with evaluate, loss and success at the kept
        points must be filled in (an extra forward where the loop did not evaluate its last iterate)."""
        raise NotImplementedError

    # -- the engine ----------------------------------------------------------------------------
    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        if self.channels_last and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t.contiguous()

    def _attack(self, x, y, targets, evaluate: bool):
        y, targets, classes_needed = check_call(x, y, targets, self.lo, self.hi)
        self._check_targets(targets)
        check_per_sample(self.eps, "eps", x.shape[0])
        if self.alpha is not None:
            check_per_sample(self.alpha, "alpha", x.shape[0])
        capture = self.cuda_graph and x.device.type == "cuda"
        if self.cuda_graph and not capture:
            _warn_cuda_graph_on_cpu()
        ctx = LoopContext(ModelRunner(self.model, self.autocast, graph_safe=capture, classes_needed=classes_needed),
                          capture)
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        generator = torch.Generator(device=x.device).manual_seed(seed)
        x0 = self._layout(x.detach())
        with eval_mode(self.model):
            plan = self._plan(ctx, x0, y, targets)
            outcome = self._run_groups(ctx, plan, x0, y, seed, generator, evaluate)
        x_adv = outcome.x
        if x_adv.stride() != x.stride():
            x_adv = torch.empty_like(x).copy_(x_adv)
        return x_adv, outcome, ctx

    def _stops_early(self, ctx: LoopContext, rows: Rows) -> bool:
        """early_stop resolved (APGD, FAB): "auto" lets rows leave a pass once they succeed
        unless the step is captured in a CUDA graph (whose static tensors cannot shrink) or
        runs on a GPU (where the host read per iteration costs more than the rows it saves)."""
        early_stop = getattr(self, "early_stop", False)
        if early_stop == "auto":
            return not ctx.capture and rows.x0.device.type == "cpu"
        if early_stop and ctx.capture:
            raise ValueError("early_stop: rows cannot leave a pass captured in a CUDA graph (cuda_graph=True)")
        return bool(early_stop)

    def _groups_per_pass(self, groups: int, device: torch.device) -> int:
        """restart_batch resolved: "auto" runs the groups (restarts, target classes) one after
        the other on the CPU, where a pass on the samples still robust costs less than a
        folded pass on all of them (measured: APGD-T folded took 3.4x and 8x the official
        sequential code's time, benchmarks/results/attacks-cpu.json), and folds them into one
        pass on a GPU, where a larger batch fills the device (measured on an H200: PGD-10 with
        10 restarts at B 64 on PreActResNet-18 ran 3.5x faster folded than one restart per
        pass, benchmarks/results/pgd-cuda.json)."""
        if self.restart_batch == "auto":
            return 1 if device.type == "cpu" else groups
        return self.restart_batch or groups

    def _rows(self, plan: Plan, x0, y, index, first: int, last: int, seed: int, generator) -> Rows:
        groups = last - first
        targets = None
        if plan.targets is not None:
            targets = plan.targets[first:last]
            targets = (targets if index is None else targets[:, index]).reshape(-1)
        if index is not None:
            x0, y = x0[index], y[index]
        return Rows(
            x0=self._layout(fold(x0, groups)), y=fold(y, groups), targets=targets,
            eps=per_row_values(self.eps, index, groups, x0),
            alpha=None if self.alpha is None else per_row_values(self.alpha, index, groups, x0),
            groups=groups, first_group=first, goal=plan.goal, seed=seed, generator=generator, kappa=self.kappa)

    def _run_groups(self, ctx, plan: Plan, x0, y, seed, generator, evaluate: bool) -> RowOutcome:
        """Runs the plan's groups, `restart_batch` of them per pass (all by default), and keeps
        each sample's worst case. Between passes only the samples not yet successful are kept
        (one host synchronisation per pass, as AutoAttack's restarts)."""
        if plan.groups == 1 and plan.initial is None:
            return self._run_rows(ctx, self._rows(plan, x0, y, None, 0, 1, seed, generator), evaluate)
        n = x0.shape[0]
        if plan.initial is None:
            no_loss = torch.full((n,), -float("inf"), dtype=maths_dtype(x0), device=x0.device)
            none = torch.zeros(n, dtype=torch.bool, device=x0.device)
            best = RowOutcome(x0.clone(), no_loss, none, none.clone())
        else:
            best = RowOutcome(x0.clone(), *usable_start(*plan.initial))
        per_pass = self._groups_per_pass(plan.groups, x0.device)
        for first in range(0, plan.groups, per_pass):
            last = min(plan.groups, first + per_pass)
            index = None
            if first > 0 or plan.initial is not None:
                index = (~best.success).nonzero()[:, 0]
                if index.numel() == 0:
                    break
            out = self._run_rows(ctx, self._rows(plan, x0, y, index, first, last, seed, generator), True)
            merge_groups(best, index, out, last - first)
        return best
