"""Attacks suite: fastrobust's AutoAttack components against the official AutoAttack code and
torchattacks, side by side: robust accuracy and time on the same model, points and budget.

    fastrobust bench attacks --device cpu [--quick]

Models: "digits" (SmallCNN trained 10 epochs on the digits train split, the tests' model;
its 359 test points) and "preact18" (PreActResNet-18 with random weights on 8 uniform
CIFAR-shaped inputs, labelled by its own clean predictions: timing only). Attacks, L-inf at
eps 0.15 (digits) or 4/255 (preact18): "apgd-ce" and "apgd-dlr" (100 iterations), "apgd-t"
(DLR-targeted, 9 target classes, 100 iterations each), "fab-t" (FAB-T, 9 target classes, 100
iterations each), "square" (p_init 0.8, 5000 queries on digits, 500 on preact18; the schedule
not rescaled, as in AutoAttack) and "autoattack-standard" (the whole standard version: APGD-CE,
APGD-T, FAB-T, Square, each on the points still robust; ours is evaluate() with the suite of
that name, the official one AutoAttack(version="standard").run_standard_evaluation). Implementations:
"fastrobust", "official" (the `autoattack` package, when importable: never a dependency) and
"torchattacks" (when installed). Each implementation runs `rounds` times, interleaved with
the others (median time); the seeds differ between implementations, so robust accuracies
agree to the attacks' randomness (about a point), not exactly.

Writes OUT/attacks-DEVICE.json (attacks-DEVICE-quick.json with --quick): per
(model, attack) the robust accuracy and median seconds of each implementation, and
speedup_of_fastrobust (t_baseline / t_fastrobust).
"""
from __future__ import annotations

import json
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from . import harness, results

NAME = "attacks"
# preact18 has random weights: at 8/255 every point breaks within a few iterations, which times
# the early stop of the rows rather than the attack loop; at 4/255 most points stay robust to
# APGD-CE and the loop runs to the end.
DIGITS_EPS, CIFAR_EPS = 0.15, 4 / 255
SEED = 0
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "autoattack-standard")


def _official():
    try:
        from autoattack import AutoAttack
        from autoattack.autopgd_base import APGDAttack, APGDAttack_targeted
        from autoattack.fab_pt import FABAttack_PT
        from autoattack.square import SquareAttack
    except ImportError as exc:
        return None, f"the official AutoAttack code is not importable ({exc})"
    return (APGDAttack, APGDAttack_targeted, FABAttack_PT, SquareAttack, AutoAttack), None


def _torchattacks():
    try:
        import torchattacks
    except ImportError as exc:
        return None, f"torchattacks is not installed ({exc})"
    return torchattacks, None


def implementations(attack: str, model, eps: float, steps: int, queries: int, device: str
                    ) -> Dict[str, object]:
    """name -> callable(x, y) -> x_adv, or a string saying why it is skipped."""
    from fastrobust.attacks import APGD, FAB, Square
    from fastrobust.eval import evaluate

    def standard(x, y):
        report = evaluate(model, (x, y), standard_presets(steps, queries), eps=eps, seed=SEED,
                          batch_size=x.shape[0], keep_adversarial=True)
        return report.x_adv.to(x.device)

    ours = {
        "apgd-ce": lambda: APGD(model, eps=eps, steps=steps, loss="ce", seed=SEED),
        "apgd-dlr": lambda: APGD(model, eps=eps, steps=steps, loss="dlr", seed=SEED),
        "apgd-t": lambda: APGD(model, eps=eps, steps=steps, loss="dlr", targeted=True, seed=SEED),
        "fab-t": lambda: FAB(model, eps=eps, steps=steps, targeted=True, seed=SEED),
        "square": lambda: Square(model, eps=eps, queries=queries, seed=SEED),
        "autoattack-standard": lambda: standard,
    }[attack]()
    impls: Dict[str, object] = {"fastrobust": ours}
    official, why = _official()
    if official is None:
        impls["official"] = why
    else:
        apgd, apgd_t, fab, square, autoattack = official

        def official_standard():
            aa = autoattack(model, norm="Linf", eps=eps, version="standard", device=device, seed=SEED,
                                       verbose=False)
            aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = steps
            aa.square.n_queries = queries
            return lambda x, y: aa.run_standard_evaluation(x, y, bs=x.shape[0])

        impls["official"] = {
            "apgd-ce": lambda: apgd(model, n_iter=steps, norm="Linf", eps=eps, loss="ce", seed=SEED, device=device).perturb,
            "apgd-dlr": lambda: apgd(model, n_iter=steps, norm="Linf", eps=eps, loss="dlr", seed=SEED,
                                     device=device).perturb,
            "apgd-t": lambda: apgd_t(model, n_iter=steps, norm="Linf", eps=eps, n_target_classes=9, seed=SEED,
                                     device=device).perturb,
            "fab-t": lambda: fab(model, norm="Linf", n_restarts=1, n_iter=steps, eps=eps, seed=SEED, targeted=True,
                                 n_target_classes=9, device=device).perturb,
            "square": lambda: square(model, p_init=0.8, n_queries=queries, eps=eps, norm="Linf", n_restarts=1,
                                     seed=SEED, device=device, resc_schedule=False).perturb,
            "autoattack-standard": official_standard,
        }[attack]()
    ta, why = _torchattacks()
    if ta is None:
        impls["torchattacks"] = why
    else:
        impls["torchattacks"] = {
            "apgd-ce": lambda: ta.APGD(model, eps=eps, steps=steps, loss="ce", seed=SEED),
            "apgd-dlr": lambda: ta.APGD(model, eps=eps, steps=steps, loss="dlr", seed=SEED),
            "apgd-t": lambda: ta.APGDT(model, eps=eps, steps=steps, n_classes=10, seed=SEED),
            "fab-t": lambda: ta.FAB(model, eps=eps, steps=steps, n_classes=10, multi_targeted=True, seed=SEED),
            "square": lambda: ta.Square(model, eps=eps, n_queries=queries, p_init=0.8, seed=SEED),
            "autoattack-standard": lambda: "not compared: torchattacks' AutoAttack fixes its budgets",
        }[attack]()
    return impls


def standard_presets(steps: int, queries: int):
    """The autoattack-standard suite with this case's budgets (the full run: 100 and 5000, as
    AutoAttack's, except Square on preact18)."""
    from dataclasses import replace

    from fastrobust.eval.presets import expand_suites

    budget = {"square": {"queries": queries}}
    return [replace(p, params={**p.params, **budget.get(p.name, {"steps": steps})})
            for p in expand_suites(["autoattack-standard"])]


def models(device: str, quick: bool):
    """(name, model, x, y, eps) of each benchmark model."""
    from fastrobust.data import load_digits
    from fastrobust.models import PreActResNet18
    from fastrobust.testing import train_digits_cnn

    x, y = load_digits("train")
    digits = train_digits_cnn(x, y, epochs=10).to(device).eval()
    xt, yt = load_digits("test")
    n = 64 if quick else xt.shape[0]
    out = [("digits", digits, xt[:n].to(device), yt[:n].to(device), DIGITS_EPS)]
    if not quick:
        gen = torch.Generator().manual_seed(harness.SEED)
        torch.manual_seed(harness.SEED)
        net = PreActResNet18(num_classes=10).to(device).eval()
        xc = torch.rand(8, 3, 32, 32, generator=gen).to(device)
        with torch.no_grad():
            yc = net(xc).argmax(1)
        out.append(("preact18", net, xc, yc, CIFAR_EPS))
    return out


def robust_accuracy(model, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    """Robust accuracy (%) of x_adv, after checking the L-inf ball and the [0, 1] box."""
    if not bool(((x_adv - x).abs().amax() <= eps + 1e-5) and x_adv.min() >= 0 and x_adv.max() <= 1):
        raise AssertionError("x_adv leaves the eps-ball or the [0, 1] box")
    with torch.no_grad():
        return 100.0 * (model(x_adv).argmax(1) == y).float().mean().item()


def run_case(model_name, model, x, y, eps, attack: str, rounds: int, quick: bool, device: str) -> dict:
    steps = 10 if quick else 100
    queries = 100 if quick else (5000 if model_name == "digits" else 500)
    impls = implementations(attack, model, eps, steps, queries, device)
    runnable: Dict[str, Callable] = {k: v for k, v in impls.items() if not isinstance(v, str)}
    entries: Dict[str, dict] = {k: {"skipped": v} for k, v in impls.items() if isinstance(v, str)}
    times: Dict[str, List[float]] = {k: [] for k in runnable}
    accuracy: Dict[str, float] = {}
    for _ in range(rounds):
        for name, fn in runnable.items():
            if name in entries:  # failed in an earlier round
                continue
            try:
                start = time.perf_counter()
                x_adv = fn(x, y)
                times[name].append(time.perf_counter() - start)
                accuracy[name] = robust_accuracy(model, x_adv, x, y, eps)
            except Exception as exc:  # a baseline that fails on this model is recorded, not fatal
                entries[name] = {"error": harness.error_text(exc)}
    for name in runnable:
        if name not in entries:
            entries[name] = {"robust_accuracy": accuracy[name], "median_s": statistics.median(times[name]),
                             "times_s": times[name]}
    ours = entries["fastrobust"].get("median_s")
    speedup = {k: e["median_s"] / ours for k, e in entries.items()
               if k != "fastrobust" and ours and e.get("median_s")}
    return {"model": model_name, "attack": attack, "eps": eps, "n": int(x.shape[0]), "steps": steps,
            "queries": queries if attack in ("square", "autoattack-standard") else None, "implementations": entries,
            "speedup_of_fastrobust": speedup}


def run(device: str, dtypes: Optional[List[torch.dtype]], options: harness.Options) -> bool:
    """Runs the suite, writes its JSON and prints a table; True when no implementation failed
    (skipped baselines, not installed, are fine)."""
    start = time.perf_counter()
    rounds = options.rounds or (1 if options.quick else 2)
    cases = []
    for model_name, model, x, y, eps in models(device, options.quick):
        for attack in ATTACKS:
            case = run_case(model_name, model, x, y, eps, attack, rounds, options.quick, device)
            cases.append(case)
            if options.verbose:
                print(format_case(case), flush=True)
    result = {"suite": NAME, "device": device, "description": __doc__.split("\n\n")[0],
              "metadata": results.collect_metadata(device, options), "rounds": rounds, "cases": cases,
              "wall_time_s": time.perf_counter() - start}
    options.out_dir.mkdir(parents=True, exist_ok=True)
    path = options.out_dir / f"{NAME}-{harness.device_type(device)}{'-quick' if options.quick else ''}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{NAME}: {len(cases)} cases in {result['wall_time_s']:.0f} s\n  json: {path}")
    return not any("error" in e for c in cases for e in c["implementations"].values())


def format_case(case: dict) -> str:
    parts = []
    for name, e in case["implementations"].items():
        if "median_s" in e:
            parts.append(f"{name} {e['robust_accuracy']:.2f}% {e['median_s']:.2f}s")
        else:
            parts.append(f"{name}: {e.get('error') or 'skipped'}")
    speed = ", ".join(f"{k} {v:.2f}x" for k, v in case["speedup_of_fastrobust"].items())
    return f"{case['model']} {case['attack']}: " + " | ".join(parts) + (f"  (speedup: {speed})" if speed else "")
