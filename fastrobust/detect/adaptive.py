"""Detector-aware (adaptive) attacks on a classifier guarded by a detector.

    det = MagNet().fit(model, x_train, y_train); det.threshold_at_fpr(x_val, 0.05)
    x_adv, info = adaptive_attack(model, det, x, y, eps=0.3)          # the combined loss, lam searched per row
    success_against_detector(info["fooled"], info["flagged"])          # = info["success"].float().mean()

An attack succeeds on a row iff the classifier is wrong there and the detector does not flag it:
f(x') != y and d(x') <= tau, tau = detector.threshold fixed at the clean operating point (spec:
/work/shared/spec/methods-more.md §1.5 "Success criterion", §1.7 "No adaptive attacks").

Sources:
- Carlini & Wagner 2017, "Adversarial examples are not easily detected: bypassing ten detection
  methods": (a) the detector as an extra class; a loss that weighs the classifier against the
  detector with a weight found by binary search per example; EOT over a randomised detector
  (their dropout attack sums the loss over sampled masks).
- Tramer, Carlini, Brendel & Madry 2020, "On adaptive attacks to adversarial example defenses":
  logit matching, min ||z(x') - z(x_t)||_2^2 towards a clean image x_t of another class, by
  signed-gradient steps in the L-inf ball (100 steps of 2.5 eps / 100).
- The spec's recommended loss set (§1.5, a synthesis, not from one paper):
  L = max(z_y - max_{j != y} z_j, -kappa) + lam max(d(x') - tau + m, 0), PGD, lam per example.

Kinds (adaptive_attack(kind=...)):
  combined        PGD (random start) maximising combined_loss = -L, lam by a per-row binary
                  search over lam_search_steps rounds: a flagged row doubles lam (bisects once
                  it has an upper bound), a row neither fooled nor flagged halves it, as C&W's
                  search on c.
  extra_class     PGD on the CW margin of G = [z_1..z_K, (s + 1) max_j z_j], s = d(x) - tau
                  (extra_class_logits): the row succeeds on G when a real class other than y
                  beats both z_y and the extra class. With max_j z_j > 0, G_{K+1} > max_j z_j
                  exactly when s > 0 (flagged); with max_j z_j < 0 the sign flips, which C&W's
                  form shares (it assumes a positive top logit).
  logit_matching  Tramer's feature adversary: ascent on -||z(x') - z(x_t)||_2^2 from x (no random
                  start); x_t is targets_x, or for each row the first row of the batch with
                  another label.

Non-differentiable detectors (detector.differentiable False): combined and extra_class run a
gradient-free random search on the same loss instead of PGD: Square's L-inf search (Andriushchenko
et al. 2020; fastrobust.attacks.Square) with its p schedule (p_init 0.8) stretched over `steps`
queries per round. fastrobust.attacks.Square itself takes only its margin or CE loss of the
logits and stops at misclassification, so the search is written here. logit_matching needs no
detector gradient and runs its PGD for every detector.

EOT (eot > 1): each gradient is the mean over eot forward/backward passes, each random-search
loss the mean over eot evaluations; the per-iterate success test uses the last pass. The
package's detectors score deterministically (KDBU draws its MC-dropout masks from a fixed
seed, MagNet adds no noise at test time), so eot = 1 suffices for them; the option is for
randomised user detectors (spec §1.5 "Randomness").

Why not fastrobust.attacks.PGD: its keep modes judge success from the logits alone (the goal
"fooled"), which cannot say "misclassified AND score <= tau", and its step takes one gradient
per step (no EOT). The loop here is made of the engine's own pieces: pgd_random_init_,
pgd_step_ and the engine's best-point tracker (pgd_update_best_, mode "first_success") with
success = fooled and not flagged, so every kind returns, per row, the first iterate that was
successful against classifier + detector, else its highest-loss iterate. The losses follow the
engine's callable-loss contract, so PGD(DetectorAware(model, det), loss=combined_loss(tau))
also runs them (keeping the first misclassified iterate, flagged or not).

Deviations from the papers:
- C&W attack with C&W-L2 (Adam on ||delta||_2^2 + c loss, c by binary search); here PGD in an
  eps ball (L-inf or L2), the threat model of the package's evaluations, with lam in the place
  of c.
- The lam search: rows that succeeded leave the search with their point and the lam that
  found it (C&W go on with a smaller c to shrink ||delta||; in a fixed eps ball a success
  cannot be improved on), as the engine's restarts stop on successful samples.
- Extra class: the paper's exact formula is quoted from memory in the spec; the code of
  carlini/nn_breaking_detection pads the logits with max-logit x (-8 - log KDE). Here
  Z_D = s = d(x) - tau, the raw score shifted by the threshold: its scale is the detector's own
  (C&W's Z_D is a detector logit), which sets how hard the extra class pushes.
- Logit matching: x_t from the batch (the first row of another label; Tramer's notebook takes
  the first test image, or the second when the classes clash); the returned point is the first
  successful iterate rather than the last.
- The gradient-free search is L-inf only.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..attacks.loop import BestTracker
from ..attacks.model_runner import eval_mode
from ..attacks.objectives import reached
from ..attacks.validation import check_call, check_choice, check_count
from ..eval.inference import logits_of
from ..ops import margin_loss, pgd_random_init_, pgd_step_
from ..reference.square import p_selection, window_side
from ._options import number, positive
from .base import Detector, NotFittedError

KINDS = ("combined", "extra_class", "logit_matching")
NORMS = ("linf", "l2")
SQUARE_P_INIT = 0.8  # Square's (AutoAttack's) initial window fraction
LO, HI = 0.0, 1.0  # the detectors' image box

Lam = Union[float, torch.Tensor]
Loss = Callable[..., torch.Tensor]


class DetectorAware(nn.Module):
    """Classifier and detector as one model: forward(x) -> (logits, score), so that one callable
    loss (the engine's loss(output, y, targets)) sees both. The score keeps its graph to x when
    the detector is differentiable; a non-differentiable detector scores a detached x (it has no
    graph to keep, and sklearn-backed scores cannot take a tensor that requires grad)."""

    def __init__(self, model: nn.Module, detector: Detector):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(detector, Detector):
            raise TypeError(f"detector must be a fastrobust.detect Detector, got {type(detector).__name__}")
        self.model = model
        self.detector = detector

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        score = self.detector.score(x if self.detector.differentiable else x.detach())
        return logits_of(self.model(x)), score


# -- losses (engine contract: loss(output, y, targets) -> (N,), maximised) -----------------------

def combined_loss(threshold: float, *, kappa: float = 0.0, margin: float = 0.0, lam: Lam = 1.0) -> Loss:
    """The spec's combined loss, negated for ascent: per row
    -(max(z_y - max_{j != y} z_j, -kappa) + lam max(d(x') - threshold + margin, 0)).
    Its maximum kappa is reached exactly when the margin is <= -kappa and d(x') <= threshold -
    margin. lam: one weight, or one per row (a 1-D tensor)."""
    tau = number(threshold, "threshold")
    kappa = _non_negative(kappa, "kappa")
    margin = _non_negative(margin, "margin")
    lam = _lam(lam)

    def loss(output, y: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits, score = _joint_output(output, targets)
        weight = _rows_of(lam, logits.shape[0])
        return margin_loss(logits, y, kind="cw", kappa=kappa) - weight * (score - tau + margin).clamp_min(0)
    return loss


def extra_class_logits(logits: torch.Tensor, score: torch.Tensor, threshold: float) -> torch.Tensor:
    """C&W 2017 (a): (N, K + 1) logits G = [z_1..z_K, (s + 1) max_j z_j], s = score - threshold."""
    s = (score - threshold).to(logits.dtype)
    return torch.cat([logits, ((s + 1) * logits.amax(1))[:, None]], 1)


def extra_class_loss(threshold: float, *, kappa: float = 0.0) -> Loss:
    """The CW margin on extra_class_logits against both y and the extra class, for ascent:
    min(max_{j != y, j <= K} G_j - max(G_y, G_{K+1}), kappa)."""
    tau = number(threshold, "threshold")
    kappa = _non_negative(kappa, "kappa")

    def loss(output, y: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits, score = _joint_output(output, targets)
        g = extra_class_logits(logits, score, tau)
        own = torch.maximum(g.gather(1, y[:, None])[:, 0], g[:, -1])
        other = logits.scatter(1, y[:, None], -math.inf).amax(1)
        return (other - own).clamp_max(kappa)
    return loss


def logit_matching_loss(target_logits: torch.Tensor) -> Loss:
    """Tramer et al. 2020, for ascent: -||z(x') - z_t||_2^2, row i matched to target_logits[i]."""
    target = target_logits.detach().float()

    def loss(output, y: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = logits_of(output).float()
        if logits.shape != target.shape:
            raise ValueError(f"target_logits must have the logits' shape {tuple(logits.shape)}, "
                             f"got {tuple(target.shape)}")
        return -(logits - target).pow(2).sum(1)
    return loss


# -- the attack ----------------------------------------------------------------------------------

def adaptive_attack(model: nn.Module, detector: Detector, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                    kind: str = "combined", steps: int = 100, alpha: Optional[float] = None,
                    lam_search_steps: int = 5, lam_init: float = 1.0, kappa: float = 0.0, margin: float = 0.0,
                    norm: str = "linf", seed: int = 0, eot: int = 1,
                    targets_x: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Attacks classifier + detector (threshold set) on images x in [0, 1] with labels y.

    eps: the radius of the `norm` ball ("linf" or "l2"). steps: PGD steps (gradient-free: queries)
    per round; alpha: the PGD step, default 2.5 eps / steps (the random search has none).
    lam_search_steps, lam_init: the rounds and the starting weight of kind "combined"'s per-row
    search. kappa: the classifier margin's confidence (combined, extra_class); margin: the
    detector margin m (combined). seed: random starts and the random search. eot: passes
    averaged per gradient (randomised detectors). targets_x: logit_matching's target images, one
    per row (default: the first row of another label in the batch).

    Returns (x_adv, info): info holds per row bool "fooled", "flagged", "success" (fooled and not
    flagged) and the "score" at x_adv, "lam" (kind "combined": the weight of each row's last
    round, for a successful row the one that succeeded; None otherwise) and "gradient_free"
    (whether the random search ran instead of PGD).
    """
    _check_detector(model, detector)
    y = _check_inputs(x, y)
    eps = positive(eps, "eps")
    kind = check_choice(kind, KINDS, "kind")
    norm = check_choice(norm, NORMS, "norm")
    steps = check_count(steps, "steps", 1)
    alpha = 2.5 * eps / steps if alpha is None else positive(alpha, "alpha")
    rounds = check_count(lam_search_steps, "lam_search_steps", 1)
    lam_init = positive(lam_init, "lam_init")
    kappa = _non_negative(kappa, "kappa")
    margin = _non_negative(margin, "margin")
    seed = check_count(seed, "seed", 0)
    eot = check_count(eot, "eot", 1)
    if targets_x is not None and kind != "logit_matching":
        raise ValueError(f"targets_x: only kind 'logit_matching' uses target images, got kind {kind!r}")
    gradient_free = kind != "logit_matching" and not detector.differentiable
    if gradient_free and norm != "linf":
        raise ValueError(f"norm: the gradient-free search (non-differentiable detector {detector.name!r}) is "
                         f"L-inf only, got {norm!r}")
    tau = float(detector.threshold)
    joint = DetectorAware(model, detector)
    x0 = x.detach().contiguous()

    def search(x_rows, y_rows, loss_at, round_seed):
        """loss_at(index): the loss of those rows of x_rows (None: all of them); the random
        search evaluates only the rows still unsuccessful."""
        if gradient_free:
            return _random_search(joint, x_rows, y_rows, loss_at, tau, eps, steps, round_seed, eot)
        return _pgd(joint, x_rows, y_rows, loss_at(None), tau, eps, alpha, steps, norm, round_seed, eot,
                    random_start=kind != "logit_matching")

    lam = None
    with eval_mode(joint):
        if kind == "combined":
            x_adv, lam = _lam_search(joint, x0, y, tau, search, rounds, lam_init, kappa, margin, seed)
        elif kind == "extra_class":
            loss = extra_class_loss(tau, kappa=kappa)
            x_adv, _ = search(x0, y, lambda index: loss, seed)
        else:
            target_logits = _target_logits(model, x0, y, targets_x)
            x_adv, _ = search(x0, y, lambda index: logit_matching_loss(_rows(target_logits, index)), seed)
        with torch.no_grad():
            logits, score = joint(x_adv)
    fooled = reached("fooled", logits, y)
    flagged = score > tau
    return x_adv, {"fooled": fooled, "flagged": flagged, "success": fooled & ~flagged, "score": score,
                   "lam": lam, "gradient_free": gradient_free}


def _lam_search(joint, x0, y, tau, search, rounds, lam_init, kappa, margin, seed):
    """C&W's binary search on the detector weight, per row: each round attacks the rows not yet
    successful with their own lam; a flagged row raises lam (x2 until it has an upper bound,
    then bisection), a row neither fooled nor flagged lowers it (bisection from 0). Returns
    (the successful point of each row where one was found, else its last round's point; lam)."""
    n = x0.shape[0]
    lam = torch.full((n,), lam_init, dtype=torch.float32, device=x0.device)
    low, high = torch.zeros_like(lam), torch.full_like(lam, math.inf)
    x_adv, done = x0.clone(), torch.zeros(n, dtype=torch.bool, device=x0.device)
    for r in range(rounds):
        index = (~done).nonzero()[:, 0]
        if index.numel() == 0:
            break
        lam_rows = lam[index]
        x_rows, ok = search(x0[index], y[index],
                            lambda rows: combined_loss(tau, kappa=kappa, margin=margin, lam=_rows(lam_rows, rows)),
                            seed + r)
        x_adv[index], done[index] = x_rows, ok
        if r + 1 < rounds:
            with torch.no_grad():
                flagged = joint(x_rows)[1] > tau
            _update_lam(lam, low, high, index[~ok & flagged], index[~ok & ~flagged])
    return x_adv, lam


def _update_lam(lam, low, high, raise_rows, lower_rows) -> None:
    """One binary-search step, in place: lam up for `raise_rows`, down for `lower_rows`."""
    low[raise_rows] = lam[raise_rows]
    up = high[raise_rows]
    lam[raise_rows] = torch.where(torch.isinf(up), 2 * low[raise_rows], (low[raise_rows] + up) / 2)
    high[lower_rows] = lam[lower_rows]
    lam[lower_rows] = (low[lower_rows] + high[lower_rows]) / 2


def _success(logits: torch.Tensor, score: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Success against classifier + detector: misclassified and not flagged."""
    return reached("fooled", logits, y) & (score <= tau)


def _loss_and_grad(joint, x, y, loss_fn, eot: int):
    """(logits, score, loss, input gradient) at x; the gradient is the mean over eot passes
    (EOT), logits, score and loss those of the last pass (as APGD's eot_iter)."""
    grad = torch.zeros_like(x)
    for _ in range(eot):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits, score = joint(x_in)
            loss = loss_fn((logits, score), y, None)
            grad += torch.autograd.grad(loss.sum(), x_in)[0]
    return logits.detach(), score.detach(), loss.detach(), grad / eot


def _pgd(joint, x0, y, loss_fn, tau, eps, alpha, steps, norm, seed, eot, random_start: bool):
    """Sign-step (L2: normalised-step) PGD ascent on loss_fn in the eps ball within [0, 1];
    returns (per row the first iterate successful against classifier + detector, else the
    highest-loss one; whether it is successful)."""
    x = x0.clone()
    if random_start:
        pgd_random_init_(x, x0, eps, norm, LO, HI, seed=seed)
    best = BestTracker(x, x0, "first_success")
    for _ in range(steps):
        logits, score, loss, grad = _loss_and_grad(joint, x, y, loss_fn, eot)
        best.update(x, loss.to(best.loss.dtype), _success(logits, score, y, tau))
        pgd_step_(x, x0, grad, eps, alpha, norm=norm, lo=LO, hi=HI)
    with torch.no_grad():
        logits, score = joint(x)
        loss = loss_fn((logits, score), y, None)
    best.update(x, loss.to(best.loss.dtype), _success(logits, score, y, tau))
    return best.x, best.success


def _evaluate(joint, x, y, loss_fn, tau, eot: int):
    """(loss averaged over eot evaluations, success at the last one) at x, without gradients."""
    total = 0.0
    with torch.no_grad():
        for _ in range(eot):
            logits, score = joint(x)
            total = total + loss_fn((logits, score), y, None).float()
    return total / eot, _success(logits, score, y, tau)


def _rows(t: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
    return t if index is None else t[index]


def _random_search(joint, x0, y, loss_at, tau, eps, queries, seed, eot):
    """Square's L-inf random search ascending loss_fn: start on vertical stripes of +-eps, then
    per query redraw one square window (side by Square's p schedule over `queries`) at a vertex
    of the ball and keep it where the loss rises; a row stops at its first point successful
    against classifier + detector. loss_at(index): the loss of those rows (None: all).
    Returns (points, success)."""
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    n, c, h, w = x0.shape
    best = (x0 + eps * _signs(gen, (n, c, 1, w), x0)).clamp(LO, HI)
    loss, ok = _evaluate(joint, best, y, loss_at(None), tau, eot)
    active = (~ok).nonzero()[:, 0]
    for it in range(queries):
        if active.numel() == 0:
            break
        side = window_side(p_selection(SQUARE_P_INIT, it, queries, rescale_schedule=True), h, w, "linf")
        cand = _window_candidate(x0[active], best[active], eps, side, gen)
        cand_loss, cand_ok = _evaluate(joint, cand, y[active], loss_at(active), tau, eot)
        keep = (cand_loss > loss[active]) | cand_ok
        best[active] = torch.where(keep[:, None, None, None], cand, best[active])
        loss[active] = torch.where(keep, cand_loss, loss[active])
        ok[active] = cand_ok
        active = active[~cand_ok]
    return best, ok


def _window_candidate(x0, best, eps, side: int, gen) -> torch.Tensor:
    """best with one random side x side window per row set to a vertex of the ball around x0
    (one random sign per channel), then the box: Square's L-inf update."""
    n, c, h, w = x0.shape
    u = torch.rand(n, 2 + c, generator=gen, device=x0.device)
    top, left = (u[:, 0] * (h - side)).long(), (u[:, 1] * (w - side)).long()
    signs = torch.where(u[:, 2:] < 0.5, -1.0, 1.0).to(x0.dtype).reshape(n, c, 1, 1)
    vertex = (x0 + eps * signs).clamp(LO, HI)
    rows = torch.arange(h, device=x0.device)[None, :]
    cols = torch.arange(w, device=x0.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
    return torch.where(in_rows[:, None, :, None] & in_cols[:, None, None, :], vertex, best)


def _signs(gen, shape, like: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.rand(shape, generator=gen, device=like.device) < 0.5, -1.0, 1.0).to(like.dtype)


def _target_logits(model, x0, y, targets_x) -> torch.Tensor:
    """Logit matching's z(x_t): of targets_x, or of the first row of the batch whose label
    differs from each row's."""
    if targets_x is None:
        index = torch.empty_like(y)
        for c in y.unique():
            others = (y != c).nonzero()[:, 0]
            if others.numel() == 0:
                raise ValueError("targets_x: every row has one label, so the batch holds no image of another "
                                 "class to match; pass targets_x")
            index[y == c] = others[0]
        targets_x = x0[index]
    elif not isinstance(targets_x, torch.Tensor) or targets_x.shape != x0.shape:
        got = tuple(targets_x.shape) if isinstance(targets_x, torch.Tensor) else type(targets_x).__name__
        raise ValueError(f"targets_x must be a tensor of x's shape {tuple(x0.shape)}, got {got}")
    with torch.no_grad():
        return logits_of(model(targets_x.to(x0))).float()


# -- checks --------------------------------------------------------------------------------------

def _check_detector(model, detector) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(detector, Detector):
        raise TypeError(f"detector must be a fastrobust.detect Detector, got {type(detector).__name__}")
    if detector.model is None or detector.threshold is None:
        raise NotFittedError(f"{detector.name}: fit the detector and set its threshold (threshold_at_fpr) "
                             "before an adaptive attack")


def _check_inputs(x, y) -> torch.Tensor:
    """x: images (N, C, H, W) in [0, 1]; y: one label per row. Returns y on x's device."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch of images (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    return check_call(x, y, None, LO, HI).y


def _joint_output(output, targets):
    """(logits, score) of a DetectorAware output, for the untargeted detector losses."""
    if targets is not None:
        raise ValueError("targets: the detector-aware losses are untargeted")
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise ValueError("output must be DetectorAware's (logits, score)")
    return output[0].float(), output[1]


def _rows_of(lam: Lam, n: int) -> Lam:
    if isinstance(lam, torch.Tensor) and lam.numel() not in (1, n):
        raise ValueError(f"lam must hold one weight or one per row ({n}), got {lam.numel()}")
    return lam


def _lam(lam: Lam) -> Lam:
    """A positive finite weight, or a 1-D tensor of them (one per row)."""
    if isinstance(lam, torch.Tensor):
        if lam.dim() > 1 or not lam.is_floating_point() or not bool(torch.isfinite(lam).all() and (lam > 0).all()):
            raise ValueError("lam must be a positive finite number or a 1-D float tensor of them")
        return lam.detach()
    return positive(lam, "lam")


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real)






def _non_negative(value, name: str) -> float:
    if not _is_number(value) or not 0 <= value <= math.inf:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)
