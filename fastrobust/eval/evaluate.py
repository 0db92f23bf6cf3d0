"""Robust-accuracy evaluation: clean accuracy, then a cascade of attacks on the points still
robust (as AutoAttack's run_standard_evaluation), with per-attack time and pass counts.

    report = evaluate(model, (x_test, y_test), attacks=["pgd20", "apgd-ce", "apgd-dlr"], eps=8/255)
    print(report.summary())
    write_report(report, "out/eval")        # report.json / .csv / .md (+ plots)

Protocol:
1. Clean pass: a point is robust only if it is classified correctly.
2. For each cascade attack in order: every point still robust is attacked (in batches of
   batch_size); a point the attack breaks (the model misclassifies its output) is robust no
   more. robust_accuracy after an attack is the fraction of all n points still robust, so
   the last one is the reported robust accuracy (the AND of every attack's outcome).
   With cascade=False every attack runs on all clean-correct points instead (each attack's
   own accuracy is reported as accuracy_alone; the overall robust accuracy is the same AND).
3. A hypocritical attack ("hypocritical" preset) runs on the clean-misclassified points and
   reports the hypocritical risk: the fraction of them its output makes correctly classified.
4. Optional gradient-masking checks (fastrobust.eval.masking) on the first check_n points;
   a check that fires emits a GradientMaskingWarning and is recorded in the report.

The robust mask, the per-attack outcomes and the counts stay on the device; the host reads
them once per attack (the indices of the points still robust, to batch them) and at the end.
The attacks themselves do not synchronise inside their step loops.

With distributed=True the ranks of a torch.distributed process group (torchrun) share the
batches and return the single process's report (fastrobust.eval.shards says how).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..attacks import Attack, HypocriticalPGD
from ..data import TensorLoader
from .inference import model_device, predict
from .noise import check_sigmas, noise_accuracy
from .presets import CASCADE, DEFAULT_ATTACKS, HYPOCRITICAL, SURROGATE, Preset, expand_suites, get_preset
from .records import AttackReport, EvalReport
from .shards import (batch_block, check_same_evaluation, gather_outcome, on_rank_zero, predict_shared,
                     process_group, share_adversarial)

AttackFactory = Callable[..., Attack]
AttackSpec = Union[str, Preset, Tuple[str, AttackFactory], Tuple[str, Attack], Attack]
Data = Union[Tuple[torch.Tensor, torch.Tensor], TensorLoader]


# --------------------------------------------------------------------------------------------
# attack specs


@dataclass
class _Spec:
    name: str
    role: str
    params: Dict[str, Any]
    build: Callable[[nn.Module, Optional[int]], Attack]
    fixed: bool = False  # a ready-made Attack instance: its own model and seed
    on_surrogate: bool = False  # a transfer preset: crafted on the surrogate, judged by the model


def _attack_params(attack: Attack) -> Dict[str, Any]:
    keep = {}
    for k, v in vars(attack).items():
        if k == "model" or k.startswith("_"):
            continue
        if isinstance(v, (int, float, str, bool, tuple, type(None), torch.dtype)) or callable(v):
            keep[k] = v
    return keep


def _role_of(attack: Attack) -> str:
    return HYPOCRITICAL if isinstance(attack, HypocriticalPGD) else CASCADE


def _resolve(spec: AttackSpec, eps: float, norm: str, autocast, attacker: nn.Module) -> _Spec:
    if isinstance(spec, str):
        spec = get_preset(spec)
    if isinstance(spec, Preset):
        preset = spec
        params = dict(preset.parameters(eps, norm), preset=preset.name, attack=preset.cls.__name__)
        return _Spec(preset.name, preset.role, params,
                     lambda model, seed: preset.build(model, eps, norm, seed=seed, autocast=autocast),
                     on_surrogate=preset.crafted_on == SURROGATE)
    if isinstance(spec, Attack):
        return _Spec(type(spec).__name__, _role_of(spec), dict(_attack_params(spec), attack=type(spec).__name__),
                     lambda model, seed: spec, fixed=True)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        name, what = spec
        if isinstance(what, Attack):
            return _Spec(name, _role_of(what), dict(_attack_params(what), attack=type(what).__name__),
                         lambda model, seed: what, fixed=True)
        if callable(what):
            def build(model, seed, factory=what):
                attack = factory(model, eps=eps, norm=norm, seed=seed, autocast=autocast)
                if not isinstance(attack, Attack):
                    raise TypeError(f"attack factory {name!r} must return a fastrobust Attack, "
                                    f"got {type(attack).__name__}")
                return attack
            probe = build(attacker, None)  # constructors do not run the model: parameters and role
            return _Spec(name, _role_of(probe), dict(_attack_params(probe), attack=type(probe).__name__), build)
    raise TypeError(f"an attack must be a preset name, a Preset, an Attack, or (name, factory) / (name, Attack); "
                    f"got {spec!r}")


def _mix(*values: int) -> int:
    """A 62-bit seed from ints (splitmix64-style), so each attack and batch gets its own stream."""
    mask = (1 << 64) - 1
    state = 0x9E3779B97F4A7C15
    for v in values:
        state = ((state ^ (int(v) & mask)) + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        state = z ^ (z >> 31)
    return state >> 2


# --------------------------------------------------------------------------------------------
# data and model helpers


def resolve_data(data: Data, n: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """(x, y, description) of the first n points of (x, y) tensors or a TensorLoader (its stored
    tensors in stored order: evaluation ignores shuffling and sharding)."""
    if isinstance(data, TensorLoader):
        x, y, what = data.x, data.y, "TensorLoader"
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        what = "tensors"
    else:
        raise TypeError(f"data must be (x, y) tensors or a TensorLoader, got {type(data).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("data must hold tensors x and y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same first dimension, got {tuple(x.shape)} and {tuple(y.shape)}")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        x, y = x[:n], y[:n]
    return x, y.long(), f"{what} x{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# evaluate


def evaluate(model: nn.Module, data: Data, attacks: Sequence[AttackSpec] = DEFAULT_ATTACKS, eps: float = 8 / 255,
             n: Optional[int] = None, *, norm: str = "linf", batch_size: int = 500,
             device: Optional[Union[str, torch.device]] = None, seed: Optional[int] = 0,
             autocast: Optional[torch.dtype] = None, cascade: bool = True,
             attack_model: Optional[nn.Module] = None, bpda=None, eot: Optional[int] = None,
             checks: Union[bool, Sequence[str], None] = None,
             check_n: int = 200, check_options: Optional[Dict[str, Any]] = None,
             surrogate: Union[nn.Module, Sequence[nn.Module], None] = None,
             surrogate_data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
             noise: Sequence[float] = (),
             model_name: Optional[str] = None, data_name: Optional[str] = None,
             verbose: bool = False, keep_adversarial: bool = False, distributed: bool = False) -> EvalReport:
    """Clean and robust accuracy of `model` on the first n points of `data`.

    model:     nn.Module taking inputs in [0, 1] (normalisation inside), returning (N, classes)
               logits or a tuple starting with them; it must be on `device`.
    data:      (x, y) tensors or a TensorLoader (its stored tensors, in stored order).
    attacks:   preset or suite names (see fastrobust.eval.presets: "autoattack-standard" runs
               AutoAttack's standard version), Preset objects, Attack instances
               (used as given: their own model and seed), or (name, factory) pairs where
               factory(model, eps=, norm=, seed=, autocast=) -> Attack.
    eps, norm: threat model ("linf" or "l2") for the presets and factories.
    n:         evaluate the first n points (None: all).
    batch_size: points per attack call (restarts and target classes multiply the rows).
    device:    default: the model's device. Batches are moved there as they are attacked.
    seed:      base seed; attack i on batch b gets its own seed derived from (seed, i, b), so a
               run repeats exactly. None: fresh random seeds.
    autocast:  None, torch.bfloat16 or torch.float16 for the clean pass and the attacks.
    cascade:   True: each attack only on the points still robust (AutoAttack). False: each on
               all clean-correct points (accuracy_alone per attack; the overall result is the same AND).
    attack_model: craft the attacks on this model instead (e.g. with BPDA or EOT wrappers, see
               fastrobust.eval.masking) while `model` judges every adversarial point.
    bpda, eot: shortcuts for attack_model: bpda=targets attacks bpda_wrap(model, targets)
               (straight-through gradients through the matching submodules), eot=k attacks
               EOT(..., samples=k) (logits averaged over k draws of a randomised model).
    checks:    gradient-masking checks on the first check_n points: True for
               masking.DEFAULT_CHECKS, or a sequence of check names (see masking.run_checks);
               "transfer" runs when named, or by default when surrogate / surrogate_data is
               given. Fired checks emit GradientMaskingWarning. check_options are passed on.
    surrogate: a model (or a sequence of models, attacked through their averaged logits:
               fastrobust.models.LogitEnsemble) that the transfer presets ("transfer") craft
               their examples on; the model judges them. Also the surrogate of the "transfer"
               masking check (else trained on surrogate_data).
    noise:     standard deviations (input units) of Gaussian noise: report.noise gets the
               accuracy on clip(x + N(0, sigma^2)) per sigma (TisODE's noise evaluation; not
               part of the robust accuracy).
    model_name, data_name: labels for the report's metadata.
    verbose:   print a line per attack.
    keep_adversarial: keep the adversarial examples (report.x_adv, on the CPU).
    distributed: share the work among the ranks of the initialised torch.distributed process
               group (under torchrun: fastrobust.distributed.setup()); every rank calls
               evaluate with the same arguments, runs a contiguous block of whole batches of the
               clean pass and of each attack, and returns the report a single process returns
               (timings aside): the batches and their seeds are the single process's. The checks
               and the noise accuracy run on rank 0 (its warnings only there). Exact for
               deterministic models: a randomised model draws from each process's own RNG.
    """
    from . import report as _report  # metadata helpers

    t_start = time.perf_counter()
    x, y, data_desc = resolve_data(data, n)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    device = torch.device(device) if device is not None else model_device(model, x.device)
    eps = float(eps)
    if attack_model is None and (bpda is not None or eot is not None):
        from .gradient_wrappers import EOT, bpda_wrap
        attack_model = model if bpda is None else bpda_wrap(model, bpda)
        attack_model = attack_model if eot is None else EOT(attack_model, samples=eot)
    attacker = model if attack_model is None else attack_model
    surrogate = _surrogate_model(surrogate)
    sigmas = check_sigmas(noise)
    specs = [_resolve(s, eps, norm, autocast, attacker) for s in expand_suites(attacks, norm)]
    transfer = [s.name for s in specs if s.on_surrogate]
    if transfer and surrogate is None:
        raise ValueError(f"attacks: {', '.join(map(repr, transfer))} craft on a surrogate model; pass surrogate=")
    total = x.shape[0]
    y_dev = y.to(device)
    ranks = process_group(distributed, device)
    check_same_evaluation((tuple(x.shape), batch_size, seed, cascade, eps, norm, [s.name for s in specs]), ranks)
    verbose = verbose and ranks.is_main

    # 1. clean accuracy
    t0 = time.perf_counter()
    pred = predict_shared(model, x, batch_size, device, autocast, ranks)
    clean_correct = pred == y_dev
    robust = clean_correct.clone()
    _sync(device)
    clean_time = time.perf_counter() - t0
    if verbose:
        print(f"clean accuracy: {100 * clean_correct.float().mean().item():.2f}% ({clean_time:.1f} s)")

    x_adv = x.detach().cpu().clone() if keep_adversarial else None
    replaced = torch.zeros(total, dtype=torch.bool)  # points whose x_adv an attack already set
    rows: List[AttackReport] = []
    row_counts: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = []
    x_src_device = x.device
    for i, spec in enumerate(specs):
        if spec.role == HYPOCRITICAL:
            todo = ~clean_correct
        elif cascade:
            todo = robust
        else:
            todo = clean_correct
        index = todo.nonzero()[:, 0]  # one host sync per attack: the number of points to attack
        count = int(index.numel())
        success = torch.zeros(total, dtype=torch.bool, device=device)
        nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        forwards = backwards = 0
        _sync(device)
        t0 = time.perf_counter()
        index_src = index.to(x_src_device)
        kept: List[Tuple[torch.Tensor, torch.Tensor]] = []  # distributed: the x_adv rows to share
        for b in batch_block(count, batch_size, ranks):
            first = b * batch_size
            rows_dev = index[first:first + batch_size]
            xb = x[index_src[first:first + batch_size]].to(device, non_blocking=True)
            yb = y_dev[rows_dev]
            seed_b = None if seed is None else _mix(seed, i, b)
            attack = spec.build(surrogate if spec.on_surrogate else attacker, seed_b)
            result = attack.run(xb, yb)
            forwards += result.forwards
            backwards += result.backwards
            if result.nonfinite is not None:
                nonfinite += result.nonfinite.sum().to(device)
            ok = result.success
            if attack_model is not None or spec.on_surrogate or spec.fixed and attack.model is not model:
                # the judged model decides: one forward on the adversarial points
                pb = predict(model, result.x_adv, batch_size, device, autocast)
                forwards += xb.shape[0]
                ok = (pb == yb) if spec.role == HYPOCRITICAL else (pb != yb)
            success[rows_dev] = ok
            if x_adv is not None and spec.role != HYPOCRITICAL:
                points = index_src[first:first + batch_size].cpu()
                broken = ok.cpu() & ~replaced[points]
                x_adv[points[broken]] = result.x_adv.detach().cpu()[broken]
                replaced[points[broken]] = True
                if ranks.enabled:
                    kept.append((points[broken], x_adv[points[broken]]))
        success, nonfinite, forwards, backwards = gather_outcome(success, nonfinite, forwards, backwards, ranks)
        if x_adv is not None:
            share_adversarial(x_adv, replaced, kept, ranks)
        if spec.role != HYPOCRITICAL:
            robust &= ~success
        _sync(device)
        elapsed = time.perf_counter() - t0
        alone = None if cascade or spec.role == HYPOCRITICAL else (clean_correct & ~success)
        row_counts.append((success.sum(), robust.sum(), nonfinite, None if alone is None else alone.sum()))
        rows.append(AttackReport(
            name=spec.name, kind=spec.role, points_attacked=count, successes=0, robust_accuracy=None,
            time_s=elapsed, forwards=forwards, backwards=backwards,
            images_per_s=count / elapsed if elapsed > 0 and count else None, params=spec.params, success=success))
        if verbose:
            _, r, _, _ = row_counts[-1]
            print(f"{spec.name}: {count} points attacked, {elapsed:.1f} s"
                  + ("" if spec.role == HYPOCRITICAL else f", robust accuracy {100 * r.item() / max(total, 1):.2f}%"))

    # the one read-back of all counts
    counts = torch.stack([t for c in row_counts for t in c if t is not None]).tolist() if row_counts else []
    it = iter(counts)
    for row, (_, _, _, alone) in zip(rows, row_counts):
        row.successes = int(next(it))
        robust_after = int(next(it))
        row.nonfinite = int(next(it))
        if alone is not None:
            row.accuracy_alone = int(next(it)) / total if total else float("nan")
        if row.kind == HYPOCRITICAL:
            row.hypocritical_risk = row.successes / row.points_attacked if row.points_attacked else None
        else:
            row.robust_accuracy = robust_after / total if total else float("nan")
        row.success = row.success.cpu()

    clean_cpu = clean_correct.cpu()
    robust_cpu = robust.cpu()
    clean_acc = int(clean_cpu.sum()) / total if total else float("nan")
    robust_acc = int(robust_cpu.sum()) / total if total else float("nan")

    noise_results = on_rank_zero(lambda: noise_accuracy(
        model, x, y, sigmas, clean_correct=clean_cpu, seed=seed, batch_size=batch_size, device=device,
        autocast=autocast), ranks) if sigmas else []

    # 4. gradient-masking checks
    check_results = []
    names = _check_names(checks, surrogate, surrogate_data)
    if names:
        from .masking import run_checks
        m = min(check_n, total)
        check_results = on_rank_zero(lambda: run_checks(
            attacker, x[:m], y[:m], eps, norm=norm, checks=names, seed=seed, batch_size=batch_size, device=device,
            autocast=autocast, surrogate=surrogate, surrogate_data=surrogate_data, options=check_options), ranks)

    total_time = time.perf_counter() - t_start
    report = EvalReport(n=total, eps=eps, norm=norm, seed=seed, cascade=cascade, clean_accuracy=clean_acc,
                        robust_accuracy=robust_acc, attacks=rows, clean_time_s=clean_time, total_time_s=total_time,
                        checks=check_results, noise=noise_results, clean_correct=clean_cpu, robust=robust_cpu, x_adv=x_adv)
    report.metadata = _report.collect_metadata(
        model, model_name=model_name, data=data_name or data_desc, attacks=[s.name for s in specs], eps=eps,
        norm=norm, seed=seed, n=total, batch_size=batch_size, device=device, autocast=autocast, cascade=cascade,
        attack_model=None if attack_model is None else type(attack_model).__name__,
        surrogate=None if surrogate is None else type(surrogate).__name__, noise=sigmas, ranks=ranks.world_size)
    if verbose:
        print(f"robust accuracy: {100 * robust_acc:.2f}% (total {total_time:.1f} s)")
    return report


def _surrogate_model(surrogate) -> Optional[nn.Module]:
    """evaluate's surrogate: a module as given, several as one LogitEnsemble."""
    if surrogate is None or isinstance(surrogate, nn.Module):
        return surrogate
    if isinstance(surrogate, (list, tuple)) and surrogate and all(isinstance(m, nn.Module) for m in surrogate):
        if len(surrogate) == 1:
            return surrogate[0]
        from ..models import LogitEnsemble
        return LogitEnsemble(surrogate)
    raise TypeError(f"surrogate must be an nn.Module or a non-empty sequence of them, got {surrogate!r:.80}")


def _check_names(checks, surrogate, surrogate_data) -> List[str]:
    from .masking import DEFAULT_CHECKS
    if checks is None or checks is False:
        return []
    names = list(DEFAULT_CHECKS) if checks is True else list(checks)
    if checks is True and (surrogate is not None or surrogate_data is not None) and "transfer" not in names:
        names.append("transfer")
    return names
