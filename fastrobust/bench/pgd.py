"""PGD suite: images/s of fastrobust's attacks against eager baselines, and the fused step op.

Attacks do not fit harness.Case (an op with inputs checked against a float64 oracle: an
attack's output depends on its random start), so this suite brings its own runner, `run`,
and reuses the harness for timing, metadata and output files. Cases:

- "pgd-10": L-inf PGD, eps 8/255, alpha 2/255, 10 steps, random start, on CIFAR-shaped inputs
  (3x32x32; DigitsCNN: the main job's 1x8x8 digits). Implementations: "fastrobust"
  (fastrobust.attacks.PGD with keep="last": the final iterate, as torchattacks returns),
  "fastrobust keep=success" (the default: best-point tracking and one more forward, which
  evaluates the last iterate), "+channels_last", "+cuda_graph" (CUDA only), "reference"
  (fastrobust.reference.pgd.pgd, the torchattacks-style eager loop; it also evaluates the final
  iterate once, to keep the worst case over restarts: one forward more than torchattacks),
  "torchattacks" (the package, when installed) and "floor" (10 x forward + input gradient,
  nothing else). bf16 means torch.autocast around the model; x stays float32.
- "step": the fused step op alone (fastrobust.ops.pgd_step_) against its eager reference
  (fastrobust.reference.pgd_step.pgd_step_) and the torchattacks element-wise chain, L-inf and
  L2, on the same inputs and gradient.
- "restarts": PGD-10 with R = 10 restarts at batch 64, folded into one batch
  (restart_batch=None, "fastrobust") against one restart at a time (restart_batch=1,
  "sequential"). eps = 0, so no sample is ever fooled and both run every restart on the whole
  batch: the case isolates the gain of folding (with fooled samples, sequential restarts
  shrink their batch and get cheaper).
- "apgd-ce": APGD with the CE loss, 100 steps, against fastrobust.reference.pgd.apgd and
  torchattacks.APGD (each when available).

Models have random weights (timing does not need trained ones); the labels are the model's
own clean predictions, so clean accuracy is 100% and the robust accuracy recorded for every
implementation (checked, with the eps-ball and the [0, 1] box, before anything is timed)
shows that the attack works. An implementation that is not available yet (NotImplementedError,
ImportError) is recorded as skipped, with the reason; one that raises anything else or fails
the check is recorded as an error and not timed.
"""
from __future__ import annotations

import copy
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import torch

from . import harness, pgd_report, results
from ..dtypes import autocast_context
from .pgd_baselines import gradient_floor, torchattacks_l2_step, torchattacks_linf_step

NAME = "pgd"
MAIN = "fastrobust"  # every other implementation of a case is timed relative to this one
REFERENCE = "reference"
FLOOR = "floor"
UNAVAILABLE = (NotImplementedError, ImportError)

IMAGE_SHAPE = (3, 32, 32)  # CIFAR-10
PGD_EPS, PGD_ALPHA, PGD_STEPS = 8 / 255, 2 / 255, 10
L2_EPS, L2_ALPHA = 0.5, 0.1
RESTARTS = 10
APGD_STEPS = 100
# Rounding slack of x0 +- eps in float32 when checking that x_adv is in the eps-ball.
BALL_SLACK = 1e-6


def small_cnn():
    from fastrobust.models import SmallCNN

    return SmallCNN(in_channels=3, num_classes=10, width=16)


def preact_resnet18():
    from fastrobust.models import PreActResNet18

    return PreActResNet18(num_classes=10)


def wrn_34_10():
    from fastrobust.models import wrn34_10

    return wrn34_10(num_classes=10)


def digits_cnn():
    """The main job's model: the small CNN (default width) on 1x8x8 scikit-learn digits."""
    from fastrobust.models import SmallCNN

    return SmallCNN(in_channels=1, num_classes=10)


MODELS = {"SmallCNN": small_cnn, "PreActResNet18": preact_resnet18, "WRN-34-10": wrn_34_10,
          "DigitsCNN": digits_cnn}
# The input each model takes; CIFAR-10's unless named here.
MODEL_INPUT_SHAPE = {"DigitsCNN": (1, 8, 8)}


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class AttackCase:
    kind: str  # "pgd-10", "restarts" or "apgd-ce"
    model: str
    batch: int
    dtype: torch.dtype  # float32, or the autocast dtype of the model
    device: str
    eps: float = PGD_EPS
    suite: str = NAME

    @property
    def name(self) -> str:
        return f"{self.kind} {self.model} B{self.batch} {harness.dtype_name(self.dtype)}"

    @property
    def autocast(self) -> Optional[torch.dtype]:
        return None if self.dtype == torch.float32 else self.dtype


@dataclass(frozen=True)
class StepCase:
    norm: str
    rows: int
    device: str
    kind: str = "step"
    dtype: torch.dtype = torch.float32
    suite: str = NAME

    @property
    def name(self) -> str:
        return f"step {self.norm} rows{self.rows} fp32"

    @property
    def eps_alpha(self):
        return (PGD_EPS, PGD_ALPHA) if self.norm == "linf" else (L2_EPS, L2_ALPHA)


@dataclass(frozen=True)
class Sizes:
    pgd: tuple  # (model, batch) pairs
    step_rows: int
    restarts: tuple  # (model, batch)
    apgd: tuple  # (model, batch)


SIZES = {
    "cuda": Sizes(pgd=(("PreActResNet18", 512), ("PreActResNet18", 128), ("WRN-34-10", 128), ("WRN-34-10", 512)),
                  step_rows=512, restarts=("PreActResNet18", 64), apgd=("PreActResNet18", 128)),
    # DigitsCNN B359: the main job's evaluation batch (the digits test split).
    "cpu": Sizes(pgd=(("SmallCNN", 128), ("DigitsCNN", 359), ("PreActResNet18", 32)),
                 step_rows=128, restarts=("SmallCNN", 64), apgd=("SmallCNN", 32)),
}
QUICK_SIZES = {
    "cuda": Sizes(pgd=(("PreActResNet18", 8),), step_rows=8, restarts=("PreActResNet18", 4), apgd=("PreActResNet18", 4)),
    "cpu": Sizes(pgd=(("SmallCNN", 8),), step_rows=8, restarts=("SmallCNN", 4), apgd=("SmallCNN", 4)),
}
DEFAULT_DTYPES = {"cuda": (torch.float32, torch.bfloat16), "cpu": (torch.float32,)}


def make_cases(device: str, dtypes: Optional[Iterable[torch.dtype]] = None, quick: bool = False) -> list:
    """The PGD cases in every dtype; the step, restart and APGD cases in float32."""
    kind = harness.device_type(device)
    sizes = (QUICK_SIZES if quick else SIZES)[kind]
    fp32 = torch.float32
    cases = [AttackCase("pgd-10", model, batch, dtype, device)
             for dtype in (dtypes or DEFAULT_DTYPES[kind]) for model, batch in sizes.pgd]
    cases += [StepCase(norm, sizes.step_rows, device) for norm in ("linf", "l2")]
    cases.append(AttackCase("restarts", *sizes.restarts, fp32, device, eps=0.0))
    cases.append(AttackCase("apgd-ce", *sizes.apgd, fp32, device))
    # The WRN-34-10 cases take longest: last, so that a run cut short by a time budget (the
    # GPU check gives all suites a few minutes) has measured every other case.
    return sorted(cases, key=lambda c: getattr(c, "model", None) == "WRN-34-10")


# ----------------------------------------------------------------------------- attack implementations


@dataclass
class Workload:
    """What the implementations of one attack case share: the model and a seeded batch."""

    case: AttackCase
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor  # the model's clean predictions


Attack = Callable[[], Optional[torch.Tensor]]  # returns x_adv (None for the floor)
AttackBuilder = Callable[[Workload], Attack]


def make_workload(case: AttackCase) -> Workload:
    torch.manual_seed(harness.SEED)
    model = MODELS[case.model]().to(case.device).eval()
    gen = torch.Generator().manual_seed(harness.SEED)
    x = torch.rand((case.batch, *MODEL_INPUT_SHAPE.get(case.model, IMAGE_SHAPE)), generator=gen).to(case.device)
    with torch.no_grad(), autocast_context(x.device, case.autocast):
        y = model(x).argmax(1)
    return Workload(case, model, x, y)


def channels_last_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def fastrobust_attack(class_name: str, channels_last: bool = False, **kwargs) -> AttackBuilder:
    """fastrobust.attacks.<class_name> with the case's eps, precision and seed; a channels_last
    run gets a channels_last copy of the model (converting only the inputs would not help)."""

    def build(work: Workload) -> Attack:
        import fastrobust.attacks

        attack_class = getattr(fastrobust.attacks, class_name, None)
        if attack_class is None:
            raise ImportError(f"fastrobust.attacks has no {class_name} yet")
        model = channels_last_copy(work.model) if channels_last else work.model
        attack = attack_class(model, eps=work.case.eps, seed=harness.SEED, autocast=work.case.autocast,
                              channels_last=channels_last, **kwargs)
        return lambda: attack(work.x, work.y)

    return build


def floor(work: Workload) -> Attack:
    return lambda: gradient_floor(work.model, work.x, work.y, PGD_STEPS, work.case.autocast)


def under_autocast(work: Workload, attack) -> Attack:
    """The eager baselines have no precision option: `attack(x, y)` runs inside torch.autocast."""

    def run():
        with autocast_context(work.x.device, work.case.autocast):
            return attack(work.x, work.y)

    return run


def reference_pgd(work: Workload) -> Attack:
    from fastrobust.reference.pgd import pgd

    return under_autocast(work, lambda x, y: pgd(work.model, x, y, work.case.eps, PGD_ALPHA, PGD_STEPS,
                                                 seed=harness.SEED))


def torchattacks_pgd(work: Workload) -> Attack:
    import torchattacks

    attack = torchattacks.PGD(work.model, eps=work.case.eps, alpha=PGD_ALPHA, steps=PGD_STEPS, random_start=True)
    return under_autocast(work, attack)


def torchattacks_apgd(work: Workload) -> Attack:
    import torchattacks

    attack = torchattacks.APGD(work.model, norm="Linf", eps=work.case.eps, steps=APGD_STEPS, n_restarts=1,
                               loss="ce", seed=harness.SEED)
    return under_autocast(work, attack)


def reference_apgd(work: Workload) -> Attack:
    from fastrobust.reference.pgd import apgd

    c = work.case
    return lambda: apgd(work.model, work.x, work.y, c.eps, steps=APGD_STEPS, norm="linf", loss="ce", seed=harness.SEED)


def attack_implementations(case: AttackCase) -> Dict[str, AttackBuilder]:
    pgd = dict(alpha=PGD_ALPHA, steps=PGD_STEPS, random_start=True, keep="last")
    if case.kind == "pgd-10":
        impls = {MAIN: fastrobust_attack("PGD", **pgd),
                 # the default keep="success": best-point tracking and one forward more
                 "fastrobust keep=success": fastrobust_attack("PGD", **dict(pgd, keep="success")),
                 "fastrobust+channels_last": fastrobust_attack("PGD", channels_last=True, **pgd)}
        if harness.device_type(case.device) == "cuda":
            impls["fastrobust+cuda_graph"] = fastrobust_attack("PGD", cuda_graph=True, **pgd)
        return dict(impls, **{REFERENCE: reference_pgd, "torchattacks": torchattacks_pgd, FLOOR: floor})
    if case.kind == "restarts":
        return {MAIN: fastrobust_attack("PGD", restarts=RESTARTS, restart_batch=None, **pgd),
                "sequential": fastrobust_attack("PGD", restarts=RESTARTS, restart_batch=1, **pgd)}
    if case.kind == "apgd-ce":
        return {MAIN: fastrobust_attack("APGD", steps=APGD_STEPS, norm="linf", loss="ce"),
                REFERENCE: reference_apgd, "torchattacks": torchattacks_apgd}
    raise ValueError(f"unknown attack case kind {case.kind!r}")


def check_adversarial(work: Workload, x_adv) -> dict:
    """x_adv must be a finite tensor like x, inside the eps-ball around x and the [0, 1] box.
    Also records the robust accuracy: the share of x_adv the model still classifies as y."""
    x, eps = work.x, work.case.eps
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape or x_adv.dtype != x.dtype:
        got = (tuple(x_adv.shape), x_adv.dtype) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
        return {"correct": False, "problems": [f"x_adv must be a {x.dtype} tensor of shape {tuple(x.shape)}, got {got}"]}
    x_adv = x_adv.detach()
    problems = []
    distance = (x_adv - x).abs().max().item() if x.numel() else 0.0
    if not torch.isfinite(x_adv).all():
        problems.append("x_adv is not finite")
    if distance > eps + BALL_SLACK:
        problems.append(f"x_adv is {distance:.3g} from x in L-inf, outside the eps-ball ({eps:.3g})")
    if x_adv.numel() and (x_adv.min().item() < 0 or x_adv.max().item() > 1):
        problems.append("x_adv leaves the [0, 1] box")
    with torch.no_grad(), autocast_context(x.device, work.case.autocast):
        robust = (work.model(x_adv).argmax(1) == work.y).float().mean().item()
    return {"correct": not problems, "problems": problems, "linf_distance": distance, "robust_accuracy": robust}


def build_and_check_attacks(work: Workload, entries: dict) -> Dict[str, Attack]:
    """Builds every implementation, runs it once (the check, which also warms it up) and
    returns those to time; records each in entries[name]."""
    runnable = {}
    for impl, builder in attack_implementations(work.case).items():
        entry = entries[impl] = {}
        try:
            attack = builder(work)
            x_adv = attack()
        except UNAVAILABLE as exc:
            entry["skipped"] = harness.error_text(exc)
            continue
        except Exception as exc:
            entry["error"] = harness.error_text(exc)
            continue
        if impl == FLOOR:
            entry["correct"] = True  # nothing to check: it computes gradients only
        else:
            entry.update(check_adversarial(work, x_adv))
        if entry["correct"]:
            runnable[impl] = attack
    return runnable


def run_attack_case(case: AttackCase, options: harness.Options) -> dict:
    record = base_record(case, model=case.model, batch=case.batch, eps=case.eps)
    try:
        work = make_workload(case)
    except Exception as exc:  # out of memory for the model, say
        record["error"] = "workload failed: " + harness.error_text(exc)
        return record
    runnable = build_and_check_attacks(work, record["implementations"])
    time_and_derive(record, case, runnable, options, images=case.batch)
    return record


# ----------------------------------------------------------------------------- the step op


def step_implementations(case: StepCase, x0, grad) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Each maps x to the stepped x (the fused op and its reference in place, the chain not)."""
    import fastrobust.ops
    from fastrobust.reference import pgd_step as reference_step

    eps, alpha = case.eps_alpha
    # Tensors made once: a Python number would be copied to the device on every call.
    eps_t = torch.tensor([eps], device=x0.device)
    alpha_t = torch.tensor([alpha], device=x0.device)
    chain = torchattacks_linf_step if case.norm == "linf" else torchattacks_l2_step
    return {
        MAIN: lambda x: fastrobust.ops.pgd_step_(x, x0, grad, eps_t, alpha_t, norm=case.norm),
        REFERENCE: lambda x: reference_step.pgd_step_(x, x0, grad, eps_t, alpha_t, norm=case.norm),
        "torchattacks_chain": lambda x: chain(x, x0, grad, eps, alpha),
    }


def step_inputs(case: StepCase):
    """x0 uniform in [0, 1], x a point of the eps-ball around it, grad ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(harness.SEED)
    shape = (case.rows, *IMAGE_SHAPE)
    x0 = torch.rand(shape, generator=gen)
    eps, _ = case.eps_alpha
    # L2: U(-s, s) over d = 3072 elements has norm ~ s * sqrt(d / 3) = 32 s, so s = eps / 32
    # puts x near the ball's surface.
    spread = eps if case.norm == "linf" else eps / 32
    x = (x0 + spread * (2 * torch.rand(shape, generator=gen) - 1)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen)
    return tuple(t.to(case.device) for t in (x, x0, grad))


def run_step_case(case: StepCase, options: harness.Options, copy_gbps: Optional[float]) -> dict:
    record = base_record(case, rows=case.rows, norm=case.norm, eps=case.eps_alpha[0], alpha=case.eps_alpha[1],
                         fastrobust_backend=pgd_ops_backend()["pgd_step_"])
    x, x0, grad = step_inputs(case)
    impls = step_implementations(case, x0, grad)
    expected = impls[REFERENCE](x.clone())
    tol = harness.TOLERANCES[torch.float32]
    runnable = {}
    for impl, fn in impls.items():
        entry = record["implementations"][impl] = {}
        try:
            errors = harness.tensor_errors({"x": fn(x.clone())}, {"x": expected}, tol)
        except Exception as exc:
            entry["error"] = harness.error_text(exc)
            continue
        abs_err, over_tol = errors["x"]
        entry.update(correct=over_tol <= 1.0, max_abs_err=abs_err, err_over_tol=over_tol, tol=tol)
        if entry["correct"]:
            # Each gets its own x, stepped again and again: a step's cost does not depend on
            # where x is in the ball.
            x_own = x.clone()
            runnable[impl] = lambda fn=fn, x_own=x_own: fn(x_own)
    time_and_derive(record, case, runnable, options, images=case.rows)
    main_t = record["implementations"][MAIN].get("median_s")
    if main_t and copy_gbps:
        # Minimal traffic of the fused step: read x, x0 and grad, write x.
        gbps = 4 * x.nbytes / main_t / 1e9
        record.update(fused_gbps=gbps, fused_fraction_of_copy_bandwidth=gbps / copy_gbps)
    return record


def pgd_ops_backend() -> Dict[str, str]:
    """Whether each fused op runs a compiled kernel or falls back to its reference."""
    import fastrobust
    import fastrobust.ops

    return {op: "extension" if fastrobust.HAS_EXT and hasattr(torch.ops.fastrobust, op) else "reference fallback"
            for op in fastrobust.ops.OPS["pgd"]}


# ----------------------------------------------------------------------------- timing and ratios


def base_record(case, **fields) -> dict:
    return {"case": case.name, "kind": case.kind, "device": case.device, "dtype": harness.dtype_name(case.dtype),
            **fields, "implementations": {}}


def time_and_derive(record: dict, case, runnable: dict, options: harness.Options, images: int) -> None:
    """Times the runnable implementations (harness.time_interleaved reads case.suite and
    case.name only) and adds images/s and the ratios:

    speedup_of_fused:        t_impl / t_fastrobust (the harness's key: > 1, fastrobust is faster)
    speedup_over_reference:  t_reference / t_impl (> 1: impl is faster than the reference)
    overhead_over_floor_pct: 100 * (t_impl / t_floor - 1)
    """
    timings = harness.time_interleaved(case, runnable, options.run_time_for(case.device), options.timing_rounds())
    impls = record["implementations"]
    for impl, timing in timings.items():
        impls[impl].update(timing)
    t = {impl: e["median_s"] for impl, e in impls.items() if e.get("median_s")}
    for impl, seconds in t.items():
        impls[impl]["images_per_s"] = images / seconds
    record["speedup_of_fused"] = {i: s / t[MAIN] for i, s in t.items() if i != MAIN} if MAIN in t else {}
    record["speedup_over_reference"] = ({i: t[REFERENCE] / s for i, s in t.items() if i != REFERENCE}
                                        if REFERENCE in t else {})
    record["overhead_over_floor_pct"] = ({i: 100 * (s / t[FLOOR] - 1) for i, s in t.items() if i != FLOOR}
                                         if FLOOR in t else {})


# ----------------------------------------------------------------------------- the suite


def run_suite(device: str, dtypes: Optional[Iterable[torch.dtype]], options: harness.Options) -> dict:
    cases = make_cases(device, dtypes, options.quick)
    copy_gbps = harness.measure_copy_bandwidth(device)
    metadata = results.collect_metadata(device, options)
    metadata.update(pgd_ops_backend=pgd_ops_backend(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    float32_matmul_precision=torch.get_float32_matmul_precision())
    result = {"suite": NAME, "description": description(device), "device": device, "metadata": metadata,
              "copy_bandwidth_gbps": copy_gbps, "complete": False, "cases": []}
    for i, case in enumerate(cases, 1):
        if options.verbose:
            print(f"[{NAME} {i}/{len(cases)}] {case.name}", file=sys.stderr, flush=True)
        with warnings.catch_warnings():
            # Until the kernels are built the ops run their reference: pgd_ops_backend says so.
            warnings.filterwarnings("ignore", message=".*runs its pure-PyTorch reference", category=RuntimeWarning)
            if isinstance(case, StepCase):
                record = run_step_case(case, options, copy_gbps)
            else:
                record = run_attack_case(case, options)
        result["cases"].append(record)
        pgd_report.write_data(result, options.out_dir, options.quick)
        if harness.device_type(device) == "cuda":
            torch.cuda.empty_cache()  # the next case's model gets the memory of this one's
    result["complete"] = True
    return result


def description(device: str) -> str:
    return (f"PGD-10 L-inf 8/255, fused step, R={RESTARTS} restarts, APGD-CE {APGD_STEPS}; "
            f"random-weight models, {'x'.join(map(str, IMAGE_SHAPE))} inputs "
            f"(DigitsCNN {'x'.join(map(str, MODEL_INPUT_SHAPE['DigitsCNN']))})")


def run(device: str, dtypes: Optional[List[torch.dtype]], options: harness.Options) -> bool:
    """Runs the suite, writes JSON/CSV/PNG, prints the table; True when no implementation
    failed its check or raised (skipped ones, not available yet, are fine)."""
    start = time.perf_counter()
    result = run_suite(device, dtypes, options)
    result["wall_time_s"] = time.perf_counter() - start
    written = pgd_report.write_results(result, options.out_dir, options.quick)
    print(pgd_report.format_table(result))
    print(f"{NAME}: {len(result['cases'])} cases in {result['wall_time_s']:.0f} s")
    for kind, path in written.items():
        print(f"  {kind}: {path}")
    return not pgd_report.failures(result)
