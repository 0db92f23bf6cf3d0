"""The evaluation step shared by `fastrobust train` and `fastrobust eval`: the evaluation
options, the attacks with progress bars, the printed accuracy table and the report files."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .common import attack_list, checks_type, cpu_threads, fmt_eps, positive_int, sigma_list
from .errors import CLIError


# -- evaluation options (shared by `train` and `eval`) ---------------------------------------

def add_eval_options(group, *, prefix: str, default_checks: str) -> None:
    """--attacks, --{prefix}n (eval: also --points), --{prefix}batch-size, --checks, --check-n, --{prefix}seed."""
    from ..eval.presets import DEFAULT_ATTACKS, PRESETS, SUITES

    group.add_argument("--attacks", type=attack_list, default=tuple(DEFAULT_ATTACKS), metavar="A[,A...]",
                       help=f"attack cascade, comma-separated (default: {','.join(DEFAULT_ATTACKS)}); "
                            f"presets: {', '.join(PRESETS)}; suites: {', '.join(SUITES)}; none: clean accuracy only")
    group.add_argument(f"--{prefix}n", dest="eval_n", type=positive_int, default=None, metavar="N",
                       help="evaluate the first N test images (default: all)")
    if not prefix:  # its own action, so an error names the option typed
        group.add_argument("--points", dest="eval_n", type=positive_int, default=None, metavar="N",
                           help="--n under torchrun, whose parser takes --n for an abbreviation of its own "
                                "options (default: all)")
    group.add_argument(f"--{prefix}batch-size", dest="eval_batch_size", type=positive_int, default=500,
                       metavar="B", help="images per attack call (default: 500)")
    group.add_argument("--checks", type=checks_type, default=checks_type(default_checks), metavar="C[,C...]",
                       help="gradient-masking checks, which also draw the accuracy-vs-eps, accuracy-vs-steps and "
                            "attack-loss plots: default (randomness, zero_gradients, eps_sweep, steps, loss_curve), "
                            f"none, or a comma list of those (default: {default_checks})")
    group.add_argument("--check-n", type=positive_int, default=200, metavar="N",
                       help="test images the checks use (default: 200)")
    group.add_argument(f"--{prefix}seed", dest="eval_seed", type=int, default=0, metavar="S",
                       help="seed of the attacks (default: 0)")
    group.add_argument("--noise", type=sigma_list, default=(), metavar="SIGMA[,SIGMA...]",
                       help="also report the accuracy under Gaussian noise of these standard deviations, e.g. "
                            "100/255 (TisODE's noise evaluation; not part of the robust accuracy; default: none)")


# -- the evaluation step ---------------------------------------------------------------------

def check_transfer_attacks(attacks: Sequence[str], have_surrogates: bool) -> None:
    """CLIError before any work when a transfer preset is asked for without a surrogate."""
    from ..eval.presets import SURROGATE, Preset, expand_suites, get_preset

    presets = [a if isinstance(a, Preset) else get_preset(a) for a in expand_suites(attacks)]
    transfer = [p.name for p in presets if p.crafted_on == SURROGATE]
    if transfer and not have_surrogates:
        raise CLIError(f"--attacks {','.join(transfer)}: crafted on a surrogate model; name one or more with "
                       "`fastrobust eval --surrogate CHECKPOINT`")


def _ticking_presets(names: Sequence[str], enabled: bool) -> Tuple[List[Any], Callable[[], None]]:
    """The presets `names` wrapped so each attack shows a tqdm bar of its batches (the bar of an
    attack closes when the next one starts). Returns (specs, close)."""
    from ..eval.presets import Preset, expand_suites, get_preset

    presets = [get_preset(p) if isinstance(p, str) else p for p in expand_suites(names)]
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    if not enabled or tqdm is None:
        return presets, lambda: None
    state: Dict[str, Any] = {"bar": None, "name": None}

    def close():
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    def tick(name: str) -> None:
        if state["name"] != name:
            close()
            state["name"] = name
            state["bar"] = tqdm(desc=f"attack {name}", unit="batch", leave=True, file=sys.stderr,
                                dynamic_ncols=True)
        state["bar"].update(1)

    @dataclass(frozen=True)
    class _Ticking(Preset):
        def build(self, model, eps, norm="linf", seed=None, autocast=None, **overrides):
            tick(self.name)
            return super().build(model, eps, norm, seed=seed, autocast=autocast, **overrides)

    wrapped = [_Ticking(p.name, p.cls, p.description, dict(p.params), dict(p.relative), p.role, p.norms,
                        p.crafted_on) for p in presets]
    return wrapped, close


def format_table(report) -> str:
    """The accuracy table (Markdown): clean, each attack of the cascade, robust."""
    rows = [("clean", report.clean_accuracy, report.n, "–", report.clean_time_s)]
    risks = []
    for a in report.attacks:
        if a.kind == "cascade":
            rows.append((a.name, a.robust_accuracy, a.points_attacked, a.successes, a.time_s))
        else:
            risks.append(a)
    rows.append(("**robust**", report.robust_accuracy, "", "", report.total_time_s))
    lines = ["| evaluation | accuracy (%) | attacked | broken | time (s) |", "|---|---:|---:|---:|---:|"]
    for name, acc, attacked, broken, t in rows:
        acc_text = "–" if acc is None else f"{100 * acc:.2f}"
        if name == "**robust**":
            acc_text = f"**{acc_text}**"
        lines.append(f"| {name} | {acc_text} | {attacked} | {broken} | {t:.1f} |")
    for a in risks:
        risk = "n/a" if a.hypocritical_risk is None else f"{100 * a.hypocritical_risk:.2f}%"
        lines.append(f"\nhypocritical risk ({a.name}): {risk} ({a.successes} of {a.points_attacked} misclassified "
                     "points made correct)")
    from ..eval.records import noise_line
    lines.extend(noise_line(r) for r in report.noise)
    for c in report.checks:
        status = "skipped" if c.passed is None else ("ok" if c.passed else "WARNING")
        lines.append(f"check {c.name}: {status}: {c.message}")
    return "\n".join(lines)


def run_evaluation(model, x: torch.Tensor, y: torch.Tensor, *, args, eps: float, device: torch.device,
                   model_name: str, data_name: str, out_dir: str, autocast=None, threads: Optional[int] = None,
                   progress: bool = True, metadata: Optional[Dict[str, Any]] = None,
                   surrogates: Sequence[torch.nn.Module] = (), attack_model: Optional[torch.nn.Module] = None,
                   distributed: bool = False):
    """evaluate() with the options of add_eval_options, then the table on stdout and
    write_report(out_dir) (metadata added to the report's). surrogates: the models the transfer
    presets craft on (fastrobust eval --surrogate); attack_model: the model the attacks are crafted
    on while `model` judges (fastrobust eval --oblivious); distributed: evaluate(distributed=True)
    on every rank of the process group, rank 0 alone printing and writing (the other ranks
    return {} as the paths). Returns (report, {kind: path})."""
    import warnings

    import torch.distributed as dist

    from ..eval import evaluate, write_report
    from ..eval.masking import GradientMaskingWarning
    check_transfer_attacks(args.attacks, bool(surrogates))
    main_rank = not distributed or dist.get_rank() == 0
    specs, close = _ticking_presets(args.attacks, progress and main_rank)
    n = min(args.eval_n, x.shape[0]) if args.eval_n else x.shape[0]
    what = ", ".join(args.attacks) or "clean only"
    if main_rank:
        print(f"evaluating {model_name} on {data_name} (first {n} test images), eps={fmt_eps(eps)}: {what}"
              + (f"; checks: {', '.join(args.checks)}" if args.checks else ""), file=sys.stderr, flush=True)
    try:
        with cpu_threads(device, threads), warnings.catch_warnings():
            warnings.simplefilter("ignore", GradientMaskingWarning)  # the table and report show them
            report = evaluate(model, (x, y), attacks=specs, eps=eps, n=n, batch_size=args.eval_batch_size,
                              device=device, seed=args.eval_seed, autocast=autocast, checks=list(args.checks),
                              check_n=args.check_n, model_name=model_name, data_name=data_name,
                              noise=args.noise, surrogate=list(surrogates) or None, attack_model=attack_model,
                              distributed=distributed)
    finally:
        close()
    report.metadata.update(metadata or {})
    if not main_rank:
        return report, {}
    paths = write_report(report, out_dir)
    print(format_table(report))
    if report.warnings:
        print(f"WARNING: {len(report.warnings)} gradient-masking check(s) fired; the robust accuracy may be "
              "overestimated (see report.md)")
    return report, paths
