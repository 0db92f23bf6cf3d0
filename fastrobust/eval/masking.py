"""Gradient-masking checks (Athalye et al. 2018; Carlini et al. 2019, "On evaluating
adversarial robustness"; AutoAttack's own checks). The BPDA / EOT wrappers that attack models
whose gradients are missing or random live in fastrobust.eval.gradient_wrappers (importable
from here too).

Each check returns a CheckResult(name, passed, message, data) and, when it fires
(passed=False), emits warnings.warn(..., GradientMaskingWarning): a reported robust accuracy
with a fired check is suspect (an upper bound at best). data holds the numbers behind the
verdict (used by fastrobust.eval.plots).

    check                what it measures                                   fires when
    randomness           two forwards of the same inputs                    the logits differ (use EOT)
    zero_gradients       input gradient of the CW margin at the clean x     some points have an all-zero gradient
    eps_sweep            PGD accuracy at eps/4, eps/2, eps, 2 eps, large    accuracy rises with eps (beyond tol),
                         (large: 1.0 = the whole box for L-inf)             or is not ~0 at the large eps
    steps                PGD-0 (random start only), PGD-10, PGD-50, and     more steps or restarts raise accuracy
                         PGD-10 with 5 restarts, same seed                  (beyond tol), or the gradient steps gain
                                                                            nothing over the random start
    loss_curve           mean attack loss at each PGD iterate (own eager    the loss does not rise (or is not finite)
                         loop, CE, from the clean point)
    transfer             white-box PGD vs PGD on a standard-trained         the transfer attack is stronger than the
                         surrogate, judged on the model                     white-box one (beyond tol)

Accuracies are fractions of all the points given (a point is robust if it is classified
correctly at the clean point and at the attack's output). tol is the allowance for noise
(default 0.02 = 2 points).

"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import PGD
from ..attacks.model_runner import eval_mode
from .._checks.pgd import canonical_norm
from ..dtypes import autocast_context
from .gradient_wrappers import BPDA, EOT, bpda_wrap  # noqa: F401  (still importable from here)
from .inference import jsonable, logits_of, model_device, predict

DEFAULT_CHECKS: Tuple[str, ...] = ("randomness", "zero_gradients", "eps_sweep", "steps", "loss_curve")
ALL_CHECKS: Tuple[str, ...] = DEFAULT_CHECKS + ("transfer",)
DEFAULT_TOL = 0.02


class GradientMaskingWarning(UserWarning):
    """A gradient-masking check fired: the reported robustness may be an artefact of the
    attack failing (masked, shattered or random gradients), not of the model."""


@dataclass
class CheckResult:
    """name; passed: True (quiet), False (fired), None (skipped); message; data."""

    name: str
    passed: Optional[bool]
    message: str
    data: Dict[str, Any] = field(default_factory=dict)

    @property
    def fired(self) -> bool:
        return self.passed is False

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message, "data": jsonable(self.data)}


def _result(name: str, problems: List[str], ok_message: str, data: Dict[str, Any], warn: bool) -> CheckResult:
    if problems:
        message = "; ".join(problems)
        if warn:
            warnings.warn(f"gradient masking check '{name}' fired: {message}", GradientMaskingWarning, stacklevel=3)
        return CheckResult(name, False, message, data)
    return CheckResult(name, True, ok_message, data)


# --------------------------------------------------------------------------------------------
# helpers


def _setup(model: nn.Module, x: torch.Tensor, device) -> torch.device:
    return torch.device(device) if device is not None else model_device(model, x.device)


def attack_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack_factory: Callable[[int], Any],
                    batch_size: int = 500, device=None, judge: Optional[nn.Module] = None,
                    autocast: Optional[torch.dtype] = None) -> float:
    """Fraction of the points classified correctly by `judge` (default: model) at the clean
    point and at the output of attack_factory(batch_index)'s attack.run. Counts stay on the
    device until the one read at the end."""
    device = _setup(model, x, device)
    judge = model if judge is None else judge
    y = y.to(device)
    robust = torch.zeros((), dtype=torch.long, device=device)
    for b, first in enumerate(range(0, x.shape[0], batch_size)):
        xb = x[first:first + batch_size].to(device)
        yb = y[first:first + batch_size]
        correct = predict(judge, xb, batch_size, device, autocast) == yb
        attack = attack_factory(b)
        x_adv = attack.run(xb, yb).x_adv
        still = predict(judge, x_adv, batch_size, device, autocast) == yb
        robust += (correct & still).sum()
    return robust.item() / max(x.shape[0], 1)


def _pgd(model, eps, norm, steps, seed, autocast, alpha=None, **kw):
    alpha = eps / 4 if alpha is None else alpha
    return lambda b: PGD(model, eps=eps, alpha=alpha, steps=steps, norm=norm, seed=None if seed is None else seed + b,
                         autocast=autocast, **kw)


def _num_classes(model: nn.Module, x: torch.Tensor, device) -> int:
    with eval_mode(model), torch.no_grad():
        return int(logits_of(model(x[:1].to(device))).shape[1])


def _default_large_eps(x: torch.Tensor, norm: str, lo: float, hi: float) -> float:
    if norm == "linf":
        return float(hi - lo)
    return float(hi - lo) * math.sqrt(x[0].numel())


# --------------------------------------------------------------------------------------------
# the checks


def check_randomness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500, device=None,
                     autocast: Optional[torch.dtype] = None, rtol: float = 1e-4, warn: bool = True,
                     **_) -> CheckResult:
    """Two forwards of the same batch in eval mode must give the same logits (up to rtol of
    their scale); a randomised model needs EOT (see EOT) for a meaningful gradient attack."""
    device = _setup(model, x, device)
    xb = x[:batch_size].to(device)
    with eval_mode(model), torch.no_grad(), autocast_context(device, autocast):
        a = logits_of(model(xb)).float()
        b = logits_of(model(xb)).float()
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    scale = 1.0 + (a.abs().max().item() if a.numel() else 0.0)
    problems = []
    if not diff <= rtol * scale:
        problems.append(f"the logits change between two calls on the same inputs (max difference {diff:.3g}): "
                        f"a randomised model; attack its expectation with EOT(model, samples=k)")
    return _result("randomness", problems, "the model is deterministic", {"max_difference": diff}, warn)


def check_zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500, device=None,
                         autocast: Optional[torch.dtype] = None, max_fraction: float = 0.0, warn: bool = True,
                         **_) -> CheckResult:
    """The input gradient of the CW margin max_{i!=y} z_i - z_y (which, unlike CE, does not
    vanish on confidently classified points) at the clean points; fires when more than
    max_fraction of them have an all-zero gradient (a non-differentiable or saturated part:
    attack through BPDA)."""
    device = _setup(model, x, device)
    y = y.to(device)
    zero = torch.zeros((), dtype=torch.long, device=device)
    with eval_mode(model):
        for first in range(0, x.shape[0], batch_size):
            xb = x[first:first + batch_size].to(device).detach().requires_grad_(True)
            yb = y[first:first + batch_size]
            with torch.enable_grad(), autocast_context(device, autocast):
                z = logits_of(model(xb)).float()
                own = z.gather(1, yb[:, None])[:, 0]
                other = z.masked_fill(F.one_hot(yb, z.shape[1]).bool(), -math.inf).amax(dim=1)
                (grad,) = torch.autograd.grad((other - own).sum(), xb, allow_unused=True)
            if grad is None:
                zero += xb.shape[0]
            else:
                zero += (grad.flatten(1).abs().amax(dim=1) == 0).sum()
    fraction = zero.item() / max(x.shape[0], 1)
    problems = []
    if fraction > max_fraction:
        problems.append(f"{100 * fraction:.1f}% of the points have an all-zero input gradient: a non-differentiable "
                        f"or saturating part hides the gradient; attack through BPDA")
    return _result("zero_gradients", problems, "the input gradients are non-zero", {"zero_fraction": fraction}, warn)


def _rises(settings, accs, tol):
    """(setting, next setting, accuracy, next accuracy) wherever accuracy rises by more than tol
    from one setting to the next."""
    return [(settings[i], settings[i + 1], accs[i], accs[i + 1]) for i in range(len(settings) - 1)
            if accs[i + 1] > accs[i] + tol]


def check_eps_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
                    eps_values: Optional[Sequence[float]] = None, large_eps: Optional[float] = None,
                    steps: int = 20, tol: float = DEFAULT_TOL, zero_tol: Optional[float] = None,
                    seed: Optional[int] = 0, batch_size: int = 500, device=None,
                    autocast: Optional[torch.dtype] = None, lo: float = 0.0, hi: float = 1.0,
                    warn: bool = True, **_) -> CheckResult:
    """PGD-`steps` (alpha = eps'/4, random start) accuracy at each eps' of eps_values (default
    eps/4, eps/2, eps, 2 eps) and at large_eps (default: L-inf hi - lo = 1.0, the whole box;
    L2 its diameter). Fires when the accuracy rises with eps by more than tol, or when it is
    above zero_tol (default min(0.02, 0.5 / classes): ~0, well below chance) at large_eps,
    where any input in the box is reachable."""
    norm = canonical_norm(norm)
    device = _setup(model, x, device)
    large = _default_large_eps(x, norm, lo, hi) if large_eps is None else float(large_eps)
    values = [eps / 4, eps / 2, eps, 2 * eps] if eps_values is None else [float(e) for e in eps_values]
    values = sorted({0.0, *[v for v in values if v < large], large})
    if zero_tol is None:
        zero_tol = min(0.02, 0.5 / _num_classes(model, x, device))
    accs = []
    for e in values:
        if e == 0:
            correct = predict(model, x, batch_size, device, autocast) == y.to(device)
            accs.append(correct.sum().item() / max(x.shape[0], 1))
        else:
            accs.append(attack_accuracy(model, x, y, _pgd(model, e, norm, steps, seed, autocast, lo=lo, hi=hi),
                                        batch_size, device, autocast=autocast))
    problems = []
    rises = _rises(values, accs, tol)
    if rises:
        problems.append("accuracy rises with eps: " + ", ".join(
            f"{100 * a:.1f}% at {e0:.4g} -> {100 * b:.1f}% at {e1:.4g}" for e0, e1, a, b in rises))
    if accs[-1] > zero_tol:
        problems.append(f"accuracy is {100 * accs[-1]:.1f}% at eps={large:.4g} (where every input is reachable; "
                        f"expected <= {100 * zero_tol:.1f}%)")
    data = {"eps": values, "accuracy": accs, "large_eps": large, "steps": steps, "norm": norm,
            "tol": tol, "zero_tol": zero_tol}
    return _result("eps_sweep", problems,
                   f"accuracy falls with eps, to {100 * accs[-1]:.1f}% at eps={large:.4g}", data, warn)


def check_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
                steps: Sequence[int] = (10, 50), restarts: int = 5, restart_steps: Optional[int] = None,
                alpha: Optional[float] = None, tol: float = DEFAULT_TOL, min_gain: Optional[float] = None,
                seed: Optional[int] = 0, batch_size: int = 500, device=None,
                autocast: Optional[torch.dtype] = None, warn: bool = True, **_) -> CheckResult:
    """PGD (alpha default eps/4, random start, the same seed for all) with 0 steps (the random
    start alone), each count of `steps`, and restart_steps (default steps[0]) steps with
    `restarts` restarts. Fires when more steps or the restarts raise the accuracy by more than
    tol, or when the most steps gain at most min_gain (default tol) over the random start
    while the random start leaves more than min_gain of the points robust."""
    norm = canonical_norm(norm)
    device = _setup(model, x, device)
    counts = sorted({0, *[int(s) for s in steps]})
    restart_steps = counts[1] if restart_steps is None and len(counts) > 1 else (restart_steps or 10)
    min_gain = tol if min_gain is None else min_gain
    accs = [attack_accuracy(model, x, y, _pgd(model, eps, norm, s, seed, autocast, alpha=alpha), batch_size, device,
                            autocast=autocast) for s in counts]
    single = accs[counts.index(restart_steps)] if restart_steps in counts else attack_accuracy(
        model, x, y, _pgd(model, eps, norm, restart_steps, seed, autocast, alpha=alpha), batch_size, device,
        autocast=autocast)
    restarted = attack_accuracy(model, x, y, _pgd(model, eps, norm, restart_steps, seed, autocast, alpha=alpha,
                                                  restarts=restarts), batch_size, device, autocast=autocast)
    problems = []
    rises = _rises(counts, accs, tol)
    if rises:
        problems.append("more steps raise accuracy: " + ", ".join(
            f"{100 * a:.1f}% with {s0} -> {100 * b:.1f}% with {s1}" for s0, s1, a, b in rises))
    if restarted > single + tol:
        problems.append(f"{restarts} restarts raise accuracy: {100 * single:.1f}% -> {100 * restarted:.1f}%")
    gain = accs[0] - accs[-1]
    if len(counts) > 1 and accs[0] > min_gain and gain <= min_gain:
        problems.append(f"{counts[-1]} gradient steps gain {100 * gain:.1f} points over the random start alone "
                        f"({100 * accs[0]:.1f}% -> {100 * accs[-1]:.1f}%): the gradient does not guide the attack")
    data = {"steps": counts, "accuracy": accs, "restarts": restarts, "restart_steps": restart_steps,
            "restart_accuracy": restarted, "single_accuracy": single, "eps": eps, "norm": norm, "tol": tol}
    return _result("steps", problems,
                   f"accuracy falls with steps ({', '.join(f'{s}: {100 * a:.1f}%' for s, a in zip(counts, accs))}; "
                   f"{restarts} restarts: {100 * restarted:.1f}%)", data, warn)


def attack_loss_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 20,
                      alpha: Optional[float] = None, norm: str = "linf", loss: str = "ce",
                      random_start: bool = False, seed: Optional[int] = 0, batch_size: int = 500, device=None,
                      autocast: Optional[torch.dtype] = None, lo: float = 0.0, hi: float = 1.0) -> List[float]:
    """The mean attack loss over the points at each iterate of a plain eager PGD ascent
    (steps + 1 values: the start, then after each step). loss: "ce" or "cw" (the margin
    max_{i!=y} z_i - z_y). L-inf sign steps or L2 normalised steps of alpha (default eps/4),
    projected onto the eps-ball and the box. The per-step means stay on the device until the end."""
    norm = canonical_norm(norm)
    device = _setup(model, x, device)
    alpha = eps / 4 if alpha is None else float(alpha)
    y = y.to(device)
    total = torch.zeros(steps + 1, dtype=torch.float64, device=device)
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    with eval_mode(model):
        for first in range(0, x.shape[0], batch_size):
            x0 = x[first:first + batch_size].to(device)
            yb = y[first:first + batch_size]
            xa = x0.clone()
            if random_start:
                xa = _project(x0 + _ball_sample(x0, eps, norm, gen), x0, eps, norm, lo, hi)
            for t in range(steps + 1):
                xa = xa.detach().requires_grad_(True)
                with torch.enable_grad(), autocast_context(device, autocast):
                    z = logits_of(model(xa)).float()
                    if loss == "ce":
                        per = F.cross_entropy(z, yb, reduction="none")
                    elif loss == "cw":
                        own = z.gather(1, yb[:, None])[:, 0]
                        per = z.masked_fill(F.one_hot(yb, z.shape[1]).bool(), -math.inf).amax(dim=1) - own
                    else:
                        raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")
                total[t] += per.detach().double().sum()
                if t == steps:
                    break
                (grad,) = torch.autograd.grad(per.sum(), xa, allow_unused=True)
                if grad is None:
                    grad = torch.zeros_like(xa)
                with torch.no_grad():
                    if norm == "linf":
                        step = grad.sign()
                    else:
                        step = grad / (grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1)))
                    xa = _project(xa + alpha * step, x0, eps, norm, lo, hi)
    return (total / max(x.shape[0], 1)).tolist()


def _ball_sample(x0: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) * 2 - 1
    if norm == "linf":
        return eps * u
    flat = u.flatten(1)
    return (eps * flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(x0)


def _project(xa: torch.Tensor, x0: torch.Tensor, eps: float, norm: str, lo: float, hi: float) -> torch.Tensor:
    delta = xa - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / n).clamp(max=1.0).view(-1, *[1] * (delta.dim() - 1))
    return (x0 + delta).clamp(lo, hi)


def check_loss_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
                     steps: int = 20, alpha: Optional[float] = None, loss: str = "ce", random_start: bool = False,
                     rise_tol: float = 1e-3, seed: Optional[int] = 0, batch_size: int = 500, device=None,
                     autocast: Optional[torch.dtype] = None, warn: bool = True, **_) -> CheckResult:
    """The mean attack loss of an eager PGD (see attack_loss_curve) must rise: fires when the
    loss after the last step exceeds the start's by at most rise_tol * max(1, |start|), or
    when it is not finite."""
    curve = attack_loss_curve(model, x, y, eps, steps=steps, alpha=alpha, norm=norm, loss=loss,
                              random_start=random_start, seed=seed, batch_size=batch_size, device=device,
                              autocast=autocast)
    problems = []
    rise = curve[-1] - curve[0]
    ups = sum(b > a for a, b in zip(curve, curve[1:]))
    if not all(math.isfinite(v) for v in curve):
        problems.append("the attack loss is not finite")
    elif not rise > rise_tol * max(1.0, abs(curve[0])):
        problems.append(f"the mean {loss} loss does not rise over {steps} steps ({curve[0]:.4g} -> {curve[-1]:.4g}): "
                        f"the gradient gives the attack no ascent direction")
    data = {"curve": curve, "loss": loss, "steps": steps, "rise": rise,
            "increasing_fraction": ups / max(len(curve) - 1, 1), "eps": eps}
    return _result("loss_curve", problems, f"the mean {loss} loss rises from {curve[0]:.4g} to {curve[-1]:.4g}",
                   data, warn)


def train_surrogate(x: torch.Tensor, y: torch.Tensor, *, epochs: int = 10, batch_size: int = 128, lr: float = 1e-2,
                    width: int = 32, num_classes: Optional[int] = None, seed: int = 0, device=None) -> nn.Module:
    """A surrogate from plain (standard, non-adversarial) training: a SmallCNN for (N, C, H, W)
    inputs (an MLP otherwise), Adam(lr), `epochs` passes in seeded random order. Returned in
    eval mode with frozen parameters. Seconds on sklearn digits."""
    from ..models import SmallCNN
    device = torch.device(device) if device is not None else x.device
    classes = int(y.max().item()) + 1 if num_classes is None else num_classes
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if x.dim() == 4:
            model = SmallCNN(x.shape[1], classes, width=width)
        else:
            model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 4 * width), nn.ReLU(),
                                  nn.Linear(4 * width, classes))
        model = model.to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=gen)
            for first in range(0, x.shape[0], batch_size):
                rows = order[first:first + batch_size]
                xb, yb = x[rows.to(x.device)].to(device), y[rows.to(y.device)].to(device)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_transfer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
                   surrogate: Optional[nn.Module] = None,
                   train_data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, steps: int = 20,
                   tol: float = DEFAULT_TOL, seed: Optional[int] = 0, batch_size: int = 500, device=None,
                   autocast: Optional[torch.dtype] = None, surrogate_options: Optional[Dict[str, Any]] = None,
                   warn: bool = True, **_) -> CheckResult:
    """White-box PGD-`steps` on the model (alpha=eps/4, random start) must be at least as
    strong as the same PGD run on a standard-trained surrogate (its last iterate, the full-
    strength transfer) and judged by the model. The surrogate is given, or trained by
    train_surrogate on train_data (default: the checked points themselves, which only makes
    the transfer attack stronger). Fires when white-box accuracy > transfer accuracy + tol."""
    norm = canonical_norm(norm)
    device = _setup(model, x, device)
    source = "given"
    if surrogate is None:
        tx, ty = train_data if train_data is not None else (x, y)
        source = "trained on the given training data" if train_data is not None else "trained on the checked points"
        surrogate = train_surrogate(tx, ty, device=device, seed=0 if seed is None else seed,
                                    **(surrogate_options or {}))
    white = attack_accuracy(model, x, y, _pgd(model, eps, norm, steps, seed, autocast), batch_size, device,
                            autocast=autocast)
    transfer = attack_accuracy(surrogate, x, y, _pgd(surrogate, eps, norm, steps, seed, None, keep="last"),
                               batch_size, device, judge=model, autocast=autocast)
    surrogate_acc = (predict(surrogate, x, batch_size, device) == y.to(device)).sum().item() / max(x.shape[0], 1)
    problems = []
    if white > transfer + tol:
        problems.append(f"a transfer attack from a standard-trained surrogate is stronger than the white-box attack "
                        f"({100 * transfer:.1f}% vs {100 * white:.1f}% accuracy): the model's gradients mislead")
    data = {"white_box_accuracy": white, "transfer_accuracy": transfer, "surrogate_clean_accuracy": surrogate_acc,
            "surrogate": f"{type(surrogate).__name__} ({source})", "steps": steps, "eps": eps, "tol": tol}
    return _result("transfer", problems, f"white-box {100 * white:.1f}% <= transfer {100 * transfer:.1f}%",
                   data, warn)


CHECKS: Dict[str, Callable[..., CheckResult]] = {
    "randomness": check_randomness,
    "zero_gradients": check_zero_gradients,
    "eps_sweep": check_eps_sweep,
    "steps": check_steps,
    "loss_curve": check_loss_curve,
    "transfer": check_transfer,
}


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
               checks: Iterable[str] = DEFAULT_CHECKS, seed: Optional[int] = 0, batch_size: int = 500,
               device=None, autocast: Optional[torch.dtype] = None, surrogate: Optional[nn.Module] = None,
               surrogate_data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
               options: Optional[Dict[str, Dict[str, Any]]] = None, warn: bool = True) -> List[CheckResult]:
    """Runs the named checks (see CHECKS) on (x, y); options maps a check name to extra keyword
    arguments of its function (e.g. {"steps": {"steps": (10, 100)}}). Each fired check warns."""
    options = options or {}
    unknown = sorted(set(options) - set(CHECKS))
    if unknown:
        raise ValueError(f"options for unknown checks {unknown}; checks are {', '.join(CHECKS)}")
    results = []
    for name in checks:
        if name not in CHECKS:
            raise ValueError(f"unknown check {name!r}; checks are {', '.join(CHECKS)}")
        kw: Dict[str, Any] = dict(norm=norm, seed=seed, batch_size=batch_size, device=device, autocast=autocast,
                                  warn=warn)
        if name == "transfer":
            kw.update(surrogate=surrogate, train_data=surrogate_data)
        kw.update(options.get(name, {}))
        if name in ("randomness", "zero_gradients"):
            results.append(CHECKS[name](model, x, y, **kw))
        else:
            results.append(CHECKS[name](model, x, y, eps, **kw))
    return results
