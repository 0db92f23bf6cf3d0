"""Reference PGD-family attacks: plain eager loops written the way the peer libraries write them.

The test oracle and the benchmark baseline of fastrobust.attacks; never imports the compiled
extension or fastrobust.ops. Each function follows one peer's code:

  fgsm               torchattacks FGSM
  pgd                torchattacks PGD (L-inf), MadryLab robustness L2Step (L2); restarts keep
                     each sample's worst case (ART's per-sample fix)
  fat_pgd            FAT's earlystop() (Zhang et al. 2020), output in the input order
  alternating_pgd    Antoniou et al.'s PGD with the Alternate loss (code/PGD.py)
  hypocritical_pgd   Tao et al.'s hypocritical attack (PGD descent on CE)
  apgd               AutoAttack's APGDAttack / APGDAttack_targeted (attack_single_run + perturb)

Inputs are in [lo, hi]; the model takes them and returns logits; call with the model in eval
mode. Random numbers come from a torch.Generator seeded with `seed` (drawn from torch's default
generator when None). Gradients are taken with torch.autograd.grad (the peers' .backward()
computes the same input gradient, plus weight gradients).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .._checks.pgd import canonical_norm
from .margin_loss import margin_loss
from .pgd_step import row_norm


def _generator(x: torch.Tensor, seed: Optional[int]) -> torch.Generator:
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator(device=x.device).manual_seed(int(seed))


def _maths_dtype(x: torch.Tensor) -> torch.dtype:
    """Losses are float32, float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _view_rows(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (x.dim() - 1)))


def loss_of(kind: str, logits: torch.Tensor, y: torch.Tensor, targets=None, kappa: float = math.inf):
    """Per-sample loss to maximise, in float32 (float64 for float64 logits): CE (targeted
    -CE(t)), CW margin or DLR."""
    logits = logits.to(_maths_dtype(logits))
    if kind == "ce":  # CE(z, y) to raise, or -CE(z, t) to lower towards t
        if targets is None:
            return F.cross_entropy(logits, y, reduction="none")
        return -F.cross_entropy(logits, targets, reduction="none")
    return margin_loss(logits, y, targets, kind, kappa if kind == "cw" else math.inf)


def _input_grad(model, x, y, kind, targets=None, kappa=math.inf):
    x = x.clone().detach().requires_grad_(True)
    logits = model(x)
    loss = loss_of(kind, logits, y, targets, kappa)
    (grad,) = torch.autograd.grad(loss.sum(), [x])
    return logits.detach(), grad.detach()


def fgsm(model, x, y, eps, lo=0.0, hi=1.0):
    """torchattacks FGSM: clip_[lo,hi](x + eps*sign(grad CE))."""
    _, grad = _input_grad(model, x, y, "ce")
    return torch.clamp(x + eps * grad.sign(), min=lo, max=hi).detach()


def _linf_step(adv, x, grad, eps, alpha, lo, hi):
    adv = adv + alpha * grad.sign()
    delta = torch.clamp(adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=lo, max=hi)


def _l2_step(adv, x, grad, eps, alpha, lo, hi):
    # robustness L2Step.step then .project
    adv = adv + alpha * grad / (row_norm(grad) + 1e-10)
    diff = (adv - x).renorm(p=2, dim=0, maxnorm=eps)
    return torch.clamp(x + diff, lo, hi)


def pgd(model, x, y, eps, alpha, steps, norm="linf", random_start=True, restarts=1, targets=None, loss="ce",
        kappa=math.inf, lo=0.0, hi=1.0, seed=None):
    """PGD; returns each sample's worst case over restarts of the final iterates.

    L-inf (torchattacks): start x + U(-eps, eps) clipped; adv + alpha*sign(g), delta clamped
    to [-eps, eps], x + delta clipped. L2 (robustness L2Step): start x + (U(0,1) - 0.5)
    renormed to eps, clipped; adv + alpha*g/(||g|| + 1e-10), delta renormed to eps, clipped.
    targets: targeted attack (success = predicting the target). Worst case: the first
    successful restart, else the highest loss at the final iterate.
    """
    norm = canonical_norm(norm)
    gen = _generator(x, seed)
    step = _linf_step if norm == "linf" else _l2_step
    best = x.clone().detach()
    best_loss = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=_maths_dtype(x))
    best_ok = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        adv = x.clone().detach()
        if random_start:
            u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            if norm == "linf":
                adv = torch.clamp(adv + (2 * u - 1) * eps, min=lo, max=hi)
            else:
                adv = torch.clamp(adv + (u - 0.5).renorm(p=2, dim=0, maxnorm=eps), lo, hi)
        for _ in range(steps):
            _, grad = _input_grad(model, adv, y, loss, targets, kappa)
            adv = step(adv, x, grad, eps, alpha, lo, hi).detach()
        with torch.no_grad():
            logits = model(adv)
            adv_loss = loss_of(loss, logits, y, targets, kappa)
            ok = logits.argmax(1) == targets if targets is not None else logits.argmax(1) != y
        better = ~best_ok & (ok | (adv_loss > best_loss))
        best[better] = adv[better]
        best_loss[better] = adv_loss[better]
        best_ok |= ok
    return best


def fat_pgd(model, x, y, eps=0.031, alpha=0.007, steps=10, tau=0, omega=0.001, random_start=True, lo=0.0, hi=1.0,
            seed=None):
    """FAT's earlystop(): each iteration, a misclassified sample with counter 0 is output at its
    current point, one with counter > 0 decrements it; the others step with
    alpha*sign(grad CE) + omega*N(0, 1), projected and clipped. Samples still iterating after
    `steps` iterations are output as they are. Unlike the official code, the output keeps the
    input order."""
    gen = _generator(x, seed)
    out = x.clone().detach()
    if random_start:
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        iter_adv = torch.clamp(x + (2 * u - 1) * eps, lo, hi)
    else:
        iter_adv = x.clone().detach()
    index = torch.arange(x.shape[0], device=x.device)  # input position of every row still iterated
    control = torch.full((x.shape[0],), tau, device=x.device)
    iter_clean, iter_target = x.detach(), y
    for _ in range(steps):
        iter_adv = iter_adv.detach().requires_grad_(True)
        output = model(iter_adv)
        wrong = output.argmax(1) != iter_target
        stop = wrong & (control == 0)
        control = torch.where(wrong & ~stop, control - 1, control)
        out[index[stop]] = iter_adv.detach()[stop]
        (grad,) = torch.autograd.grad(F.cross_entropy(output, iter_target), [iter_adv])
        keep = ~stop
        if not keep.any():
            return out
        index, control, iter_clean, iter_target = index[keep], control[keep], iter_clean[keep], iter_target[keep]
        iter_adv, grad = iter_adv.detach()[keep], grad[keep]
        noise = torch.randn(iter_adv.shape, generator=gen, device=x.device, dtype=x.dtype)
        iter_adv = iter_adv + alpha * grad.sign() + omega * noise
        iter_adv = torch.min(torch.max(iter_adv, iter_clean - eps), iter_clean + eps)
        iter_adv = torch.clamp(iter_adv, lo, hi)
    out[index] = iter_adv.detach()
    return out


def alternating_stage(step: int, steps: int, stages: int) -> int:
    """The official Alternate loss switches at timesteps [50, 100] / [33, 66, 100] for T=100."""
    return min(step // max(steps // stages, 1), stages - 1)


def alternating_pgd(model, x, y, eps, alpha=None, steps=100, schedule: Sequence[str] = ("ce", "cw"), restarts=1,
                    random_start=False, lo=0.0, hi=1.0, seed=None):
    """Antoniou et al.'s PGD: L-inf sign steps of alpha (eps/4 by default) on the loss of the
    current stage; every misclassified iterate (the final one included) overwrites x_adv, so
    the last one is returned, and x itself where no iterate was misclassified. Random start
    (random_start or restarts > 1): x + eps*sign(U(-eps, eps)), not clipped."""
    alpha = eps / 4 if alpha is None else alpha
    gen = _generator(x, seed)
    x_adv = x.clone().detach()
    for _ in range(restarts):
        xn = x.clone().detach()
        if random_start or restarts > 1:
            noise = (2 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) - 1) * eps
            xn = xn + eps * torch.sign(noise)
        for t in range(steps):
            kind = schedule[alternating_stage(t, steps, len(schedule))]
            out, grad = _input_grad(model, xn, y, kind)
            is_fooled = out.argmax(dim=1) != y
            x_adv[is_fooled] = xn[is_fooled]
            xn = xn + alpha * grad.sign()
            eta = torch.clamp(xn - x, -eps, eps)
            xn = torch.clamp(x + eta, lo, hi).detach()
        with torch.no_grad():
            is_fooled = model(xn).argmax(dim=1) != y
        x_adv[is_fooled] = xn[is_fooled]
    return x_adv


def hypocritical_pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10, norm="linf", lo=0.0, hi=1.0, seed=None):
    """Hypocritical examples: from x + 0.01*N(0, 1) (clipped), `steps` descent steps on CE
    (x - alpha*sign(g); L2: x - alpha*g/||g||), projected onto the eps-ball and clipped;
    returns the final iterate."""
    norm = canonical_norm(norm)
    gen = _generator(x, seed)
    adv = torch.clamp(x + 0.01 * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype), lo, hi)
    for _ in range(steps):
        _, grad = _input_grad(model, adv, y, "ce")
        if norm == "linf":
            adv = adv - alpha * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps)
        else:
            adv = adv - alpha * grad / (row_norm(grad) + 1e-12)
            adv = x + (adv - x).renorm(p=2, dim=0, maxnorm=eps)
        adv = torch.clamp(adv, lo, hi).detach()
    return adv


# ---- APGD (AutoAttack's autopgd_base.py) --------------------------------------------------------

def _aa_normalize(t: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        scale = t.abs().view(t.shape[0], -1).max(1)[0]
    else:
        scale = (t ** 2).view(t.shape[0], -1).sum(-1).sqrt()
    return t / (_view_rows(scale, t) + 1e-12)


def check_oscillation(loss_steps: torch.Tensor, j: int, k: int, k3: float = 0.75) -> torch.Tensor:
    """AutoAttack's check_oscillation: 1 where the loss rose in at most k3*k of the k steps
    ending at j. At the first checkpoint (j = k - 1) its last comparison reads loss_steps[-1],
    a row not written yet (0)."""
    t = torch.zeros(loss_steps.shape[1], device=loss_steps.device)
    for counter5 in range(k):
        t += (loss_steps[j - counter5] > loss_steps[j - counter5 - 1]).float()
    return (t <= k * k3 * torch.ones_like(t)).float()


def apgd_single_run(model, x, y, eps, n_iter, norm, loss, targets=None, rho=0.75, lo=0.0, hi=1.0, generator=None):
    """AutoAttack's attack_single_run (L-inf / L2); returns (x_best, acc, loss_best, x_best_adv).

    AutoAttack casts its inputs to float32, so its float32 buffers (step sizes, loss history)
    match them; here they take x's dtype (float64 losses for float64 x) instead.
    """
    n_iter_2 = max(int(0.22 * n_iter), 1)
    n_iter_min = max(int(0.06 * n_iter), 1)
    size_decr = max(int(0.03 * n_iter), 1)
    ndims = x.dim() - 1

    def project(x_new):
        if norm == "linf":
            return torch.clamp(torch.min(torch.max(x_new, x - eps), x + eps), lo, hi)
        delta = x_new - x
        return torch.clamp(x + _aa_normalize(delta, norm) * torch.min(eps * torch.ones_like(x), row_norm(delta)), lo, hi)

    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device) - 1
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device)
    x_adv = x + eps * torch.ones_like(x).detach() * _aa_normalize(t, norm)
    x_adv = x_adv.clamp(lo, hi)
    x_best = x_adv.clone()
    x_best_adv = x_adv.clone()
    loss_steps = torch.zeros([n_iter, x.shape[0]], device=x.device, dtype=_maths_dtype(x))

    logits, grad = _input_grad(model, x_adv, y, loss, targets)
    loss_indiv = loss_of(loss, logits, y, targets)
    grad_best = grad.clone()
    acc = logits.max(1)[1] == y
    loss_best = loss_indiv.detach().clone()

    step_size = 2.0 * eps * torch.ones([x.shape[0], *([1] * ndims)], device=x.device, dtype=x.dtype)
    x_adv_old = x_adv.clone()
    k = n_iter_2 + 0
    counter3 = 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones_like(loss_best)

    for i in range(n_iter):
        with torch.no_grad():
            x_adv = x_adv.detach()
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            if norm == "linf":
                x_adv_1 = x_adv + step_size * torch.sign(grad)
            else:
                x_adv_1 = x_adv + step_size * _aa_normalize(grad, norm)
            x_adv_1 = project(x_adv_1)
            x_adv_1 = project(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a))
            x_adv = x_adv_1 + 0.0

        logits, grad = _input_grad(model, x_adv, y, loss, targets)
        loss_indiv = loss_of(loss, logits, y, targets)
        pred = logits.max(1)[1] == y
        acc = torch.min(acc, pred)
        ind_pred = (pred == 0).nonzero().squeeze()
        x_best_adv[ind_pred] = x_adv[ind_pred] + 0.0

        with torch.no_grad():
            y1 = loss_indiv.detach().clone()
            loss_steps[i] = y1 + 0
            ind = (y1 > loss_best).nonzero().squeeze()
            x_best[ind] = x_adv[ind].clone()
            grad_best[ind] = grad[ind].clone()
            loss_best[ind] = y1[ind] + 0
            counter3 += 1
            if counter3 == k:
                fl_oscillation = check_oscillation(loss_steps, i, k, k3=rho)
                fl_reduce_no_impr = (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best).float()
                fl_oscillation = torch.max(fl_oscillation, fl_reduce_no_impr)
                reduced_last_check = fl_oscillation.clone()
                loss_best_last_check = loss_best.clone()
                if fl_oscillation.sum() > 0:
                    ind_fl_osc = (fl_oscillation > 0).nonzero().squeeze()
                    step_size[ind_fl_osc] /= 2.0
                    x_adv[ind_fl_osc] = x_best[ind_fl_osc].clone()
                    grad[ind_fl_osc] = grad_best[ind_fl_osc].clone()
                k = max(k - size_decr, n_iter_min)
                counter3 = 0
    return x_best, acc, loss_best, x_best_adv


def apgd(model, x, y, eps, steps=100, norm="linf", loss="ce", targeted=False, n_target_classes=9, restarts=1,
         rho=0.75, lo=0.0, hi=1.0, seed=0):
    """AutoAttack's APGDAttack.perturb (untargeted, loss "ce" or "dlr") and
    APGDAttack_targeted.perturb (targeted: the targeted DLR loss, or -CE(t) with loss="ce",
    towards the classes ranked 2 .. n_target_classes+1 by the clean logits).

    Samples misclassified at x are not attacked; each restart (and target class) attacks the
    samples still robust, and a fooled sample gets that run's last misclassified iterate.
    Robust samples are returned unchanged (x)."""
    norm = canonical_norm(norm)
    gen = _generator(x, seed)
    x = x.detach().clone()
    with torch.no_grad():
        y_pred = model(x).max(1)[1]
    acc = y_pred == y
    adv = x.clone()
    target_classes = range(2, n_target_classes + 2) if targeted else [None]
    for target_class in target_classes:
        for _ in range(restarts):
            ind_to_fool = acc.nonzero().squeeze(1)
            if ind_to_fool.numel() == 0:
                continue
            x_to_fool, y_to_fool = x[ind_to_fool].clone(), y[ind_to_fool].clone()
            targets = None
            if target_class is not None:
                with torch.no_grad():
                    targets = model(x_to_fool).sort(dim=1)[1][:, -target_class]
            _, acc_curr, _, adv_curr = apgd_single_run(model, x_to_fool, y_to_fool, eps, steps, norm, loss, targets,
                                                      rho, lo, hi, gen)
            ind_curr = (acc_curr == 0).nonzero().squeeze(1)
            acc[ind_to_fool[ind_curr]] = False
            adv[ind_to_fool[ind_curr]] = adv_curr[ind_curr].clone()
    return adv
