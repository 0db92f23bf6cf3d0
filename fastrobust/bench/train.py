"""Training suite: seconds per epoch of adversarial training, fastrobust's Trainer against an
eager float32 loop and against the (k+1) x forward/backward floor.

Whole training loops do not fit harness.Case (an op checked against a float64 oracle), so this
suite brings its own runner, `run`, like the PGD suite (its settings in train_plan.py, its
output in train_report.py, which reuses the PGD suite's files and plot). Data:
synthetic_dataset, CIFAR-10-shaped (50,000 x 3x32x32, 10 classes, learnable) on CUDA, held on
the device.

Cases: (model, recipe) for PreActResNet-18 and WRN-34-10 and the recipes
- "standard": cross-entropy on the clean batch (k = 0),
- "fgsm-rs":  FGSM with a random start, alpha = 1.25 eps (Wong et al.; k = 1),
- "pgd-10":   PGD-10 AT, alpha 2/255, random start (Madry et al.; k = 10),
all at eps 8/255, SGD (lr 0.02, momentum 0.9, weight decay 5e-4, constant lr: the schedule
does not change the cost of a step).

Implementations per case:
- "fastrobust": fastrobust.train.Trainer (the recipe's batch_loss on the fused attack engine,
  then zero_grad / backward / SGD step / schedule step, with the Trainer's device-side metric
  sums) under bf16 autocast and channels_last on CUDA (float32, contiguous on the CPU; --dtype
  picks another autocast dtype). Timed through fastrobust.train.epoch.train_epoch with the epoch cut to the
  timed number of steps (no evaluation, checkpoint or clean-accuracy forward:
  eval_every=0, track_clean=False).
- "eager": the float32 loop written the usual way (benchmarks/train_baselines.EagerLoop:
  torchattacks-style attack inline with autograd, eval mode for the attack, .item() logging).
- "floor": (k+1) x forward/backward with no attack logic, in fastrobust's precision and memory
  format (train_baselines.FloorLoop): the least work any k-step AT implementation must do.

Method. Every implementation is checked first (the check doubles as warm-up): `check_steps`
training steps on one fixed batch (the first `batch` images) must give finite losses and a
last loss below the first (the data are learnable: the model must fit the batch it trains on),
and the adversarial batch it trains on must be finite, in [0, 1] and within eps of x in L-inf
(for fastrobust it is captured with a forward pre-hook on the model: the train-mode forward
of the recipe). The two loops are stochastic (different random starts, different kernels):
nothing claims they produce the same numbers. The floor is only run once and its loss
checked for finiteness ("checked": false). Then `warmup_steps` untimed steps, then `rounds`
interleaved rounds (fastrobust, eager, floor, fastrobust, ...) of `timed_steps` training
steps each, synchronised at both ends; step_time_s is the median over rounds of the time per
step. A FIXED NUMBER OF STEPS IS TIMED, NOT AN EPOCH:

    seconds_per_epoch = step_time_s x ceil(50,000 / batch)

(the Trainer drops the last partial batch: floor(50,000 / batch) steps; ceil is the upper
bound). Ratios: eager_over_fastrobust = t_eager / t_fastrobust (> 1: fastrobust faster),
fastrobust_over_floor = t_fastrobust / t_floor (>= 1; 1 would be a perfect loop). Projected
FGSM-RS training time: 15 x seconds_per_epoch (Wong et al.'s 15 epochs).

Targets (H100; recorded with the value and whether met, and whether this run is on such a
device): PGD-10 AT epoch >= 3x faster than the eager fp32 loop and <= 1.15x the floor; FGSM-RS
AT for 15 epochs of CIFAR-10-sized data in <= 120 s on PreActResNet-18.

CPU: PreActResNet-18 only, batch 16, 3x16x16 inputs, a few steps, so that the whole run takes a
few minutes; WRN-34-10 is recorded as skipped with the reason. --quick: batch 4 (8 on CUDA),
8x8 inputs on the CPU, one round of one step.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from . import harness, results
from .pgd_report import failures
from .train_baselines import EagerLoop, FloorLoop
from .train_plan import (AMP, BALL_SLACK, DEFAULT_DTYPES, EAGER, EPOCH_IMAGES, EPS, FGSM_ALPHA, FLOOR,
                         IMPLEMENTATIONS, LR, MAIN, MODELS, MOMENTUM, NAME, PGD_ALPHA, PGD_STEPS, RECIPE_SPECS,
                         TARGETS, TRAINER_EPOCHS, WEIGHT_DECAY, Plan, RecipeSpec, plan_for, steps_per_epoch)
from .train_report import finish, format_table, write_data, write_results

# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class TrainCase:
    kind: str  # "standard", "fgsm-rs" or "pgd-10"
    model: str  # a key of MODELS
    batch: int
    image_shape: Tuple[int, ...]
    device: str
    dtype: torch.dtype  # fastrobust's (and the floor's) autocast dtype; float32: none
    channels_last: bool  # fastrobust's (and the floor's) memory format
    skip: Optional[str] = None
    suite: str = NAME

    @property
    def spec(self) -> RecipeSpec:
        return RECIPE_SPECS[self.kind]

    @property
    def name(self) -> str:
        shape = "x".join(map(str, self.image_shape))
        return f"{self.kind} {self.model} B{self.batch} {shape} {harness.dtype_name(self.dtype)}"


def make_cases(device: str, dtypes: Optional[Iterable[torch.dtype]] = None, quick: bool = False) -> List[TrainCase]:
    kind = harness.device_type(device)
    dtypes = list(dtypes or DEFAULT_DTYPES[kind])
    for d in dtypes:
        if d not in AMP:
            raise SystemExit(f"train suite: --dtype {harness.dtype_name(d)} is not supported; "
                             f"use {', '.join(harness.dtype_name(x) for x in AMP)}")
    plan = plan_for(device, quick)
    # WRN-34-10 last: a run cut short by a time budget has measured the rest.
    return [TrainCase(spec, size.model, size.batch, size.image_shape, device, dtype, kind == "cuda", size.skip)
            for size in plan.models for dtype in dtypes for spec in RECIPE_SPECS]


# ----------------------------------------------------------------------------- implementations


@dataclass
class Workload:
    """The training data of a case (the same tensors the Trainer loads: synthetic_dataset with
    the same seed) and its DatasetInfo (classes, mean/std of the model's Normalize layer)."""

    x: torch.Tensor
    y: torch.Tensor
    info: object


def make_workload(case: TrainCase, plan: Plan) -> Workload:
    from fastrobust.data import load_dataset

    if case.skip:
        raise harness.Unsupported(case.skip)
    x, y, info = load_dataset("synthetic", "train", device=case.device, n=plan.data_images,
                              shape=case.image_shape, seed=harness.SEED)
    return Workload(x, y, info)


def build_model(case: TrainCase, work: Workload) -> torch.nn.Module:
    """The case's model exactly as the Trainer builds it (seeded the same way)."""
    from fastrobust.train import build_model as trainer_build_model

    torch.manual_seed(harness.SEED)
    return trainer_build_model(MODELS[case.model], work.info).to(case.device)


class TrainerImpl:
    """fastrobust.train.Trainer, one call of its epoch loop per timed round (the epoch cut to
    the number of steps asked for)."""

    what = "fastrobust.train.Trainer epoch loop (recipe.batch_loss on the fused attack engine + SGD step)"

    def __init__(self, case: TrainCase, work: Workload, plan: Plan):
        from fastrobust.train import TrainConfig, Trainer
        from fastrobust.train.metrics import Progress

        spec = case.spec
        config = TrainConfig(
            model=MODELS[case.model], data="synthetic",
            data_options={"n": plan.data_images, "shape": list(case.image_shape), "seed": harness.SEED},
            recipe=spec.recipe, eps=EPS, alpha=spec.alpha, steps=PGD_STEPS if spec.recipe == "pgd" else None,
            epochs=TRAINER_EPOCHS, batch_size=case.batch, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
            schedule="constant", amp=AMP[case.dtype], channels_last=case.channels_last, device=case.device,
            seed=harness.SEED, out=os.path.join(tempfile.gettempdir(), "fastrobust-bench-train"), eval_every=0,
            final_eval=False, overfit_guard=False, log_every=10 ** 9, progress=False, plot=False, track_clean=False)
        self.trainer = Trainer(config)
        self.progress = Progress(False)
        self.calls = 0

    def _epoch(self) -> dict:
        epoch = self.calls % TRAINER_EPOCHS  # another permutation of the data each round
        self.calls += 1
        from fastrobust.train.epoch import train_epoch

        return train_epoch(self.trainer, epoch, self.progress)

    def check(self, steps: int):
        """`steps` steps on the first `batch` training images (a one-batch loader swapped in);
        the inputs of the model's train-mode forwards are captured: the recipe's x_adv."""
        from fastrobust.data import TensorLoader

        t = self.trainer
        loader = t.loader
        b = t.config.batch_size
        x, y = loader.x[:b], loader.y[:b]
        captured: List[torch.Tensor] = []

        def capture(module, args):
            if module.training and args and isinstance(args[0], torch.Tensor):
                captured[:] = [args[0].detach().clone()]

        handle = t.model.register_forward_pre_hook(capture)
        t.loader = TensorLoader(x, y, b, shuffle=False, drop_last=True)
        try:
            losses = [self._epoch()["train_loss"] for _ in range(steps)]
        finally:
            t.loader = loader
            handle.remove()
        return losses, (captured[0] if captured else None), x

    def run(self, steps: int) -> None:
        self.trainer.steps_per_epoch = steps
        self._epoch()

    def close(self) -> None:
        self.trainer.close()


class EagerImpl:
    what = "eager float32 loop: torchattacks-style attack inline (autograd), eval/train switching, .item() logging"

    def __init__(self, case: TrainCase, work: Workload, plan: Plan):
        spec = case.spec
        self.batch = (work.x[:case.batch], work.y[:case.batch])
        self.loop = EagerLoop(build_model(case, work), work.x, work.y, case.batch, spec.recipe, EPS, spec.alpha,
                              spec.attack_steps, LR, MOMENTUM, WEIGHT_DECAY)

    def check(self, steps: int):
        losses, adv = self.loop.check(*self.batch, steps)
        return losses, adv, self.batch[0]

    def run(self, steps: int) -> None:
        self.loop.run(steps)

    def close(self) -> None:
        self.loop.close()


class FloorImpl:
    what = "(k+1) x forward/backward: k x (eval forward + input gradient) + train forward/backward + SGD step"

    def __init__(self, case: TrainCase, work: Workload, plan: Plan):
        model = build_model(case, work)
        if case.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.loop = FloorLoop(model, work.x[:case.batch], work.y[:case.batch], case.spec.attack_steps, LR, MOMENTUM,
                              WEIGHT_DECAY, None if case.dtype == torch.float32 else case.dtype,
                              case.channels_last)

    def run(self, steps: int) -> None:
        self.loop.run(steps)

    def close(self) -> None:
        self.loop.close()


BUILDERS = {MAIN: TrainerImpl, EAGER: EagerImpl, FLOOR: FloorImpl}


def implementation_settings(case: TrainCase, impl: str) -> dict:
    if impl == EAGER:
        return {"precision": "fp32", "channels_last": False}
    return {"precision": harness.dtype_name(case.dtype), "channels_last": case.channels_last}


# ----------------------------------------------------------------------------- checks


def check_training(losses: List[float], x_adv: Optional[torch.Tensor], x: torch.Tensor, eps: float) -> dict:
    """A few steps on one fixed batch: every loss finite, the last below the first; the batch
    the model was trained on (x_adv) finite, in [0, 1] and within eps of x in L-inf."""
    problems = []
    finite = bool(losses) and all(math.isfinite(v) for v in losses)
    decreased = finite and len(losses) >= 2 and losses[-1] < losses[0]
    if not finite:
        problems.append(f"training loss is not finite: {losses}")
    elif not decreased:
        problems.append(f"training loss did not decrease over {len(losses)} steps on one batch: {losses}")
    distance = None
    if not isinstance(x_adv, torch.Tensor) or tuple(x_adv.shape) != tuple(x.shape):
        got = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
        problems.append(f"the adversarial batch must have the shape of x {tuple(x.shape)}, got {got}")
    else:
        x_adv, x = x_adv.detach().float(), x.detach().float()
        distance = (x_adv - x).abs().max().item() if x.numel() else 0.0
        if not torch.isfinite(x_adv).all():
            problems.append("the adversarial batch is not finite")
        if distance > eps + BALL_SLACK:
            problems.append(f"the adversarial batch is {distance:.4g} from x in L-inf, outside the eps-ball "
                            f"({eps:.4g})")
        if x_adv.numel() and (x_adv.min().item() < 0 or x_adv.max().item() > 1):
            problems.append("the adversarial batch leaves the [0, 1] box")
    return {"correct": not problems, "problems": problems, "check_losses": list(losses),
            "loss_decreased": decreased, "linf_distance": distance, "eps": eps}


def check_implementation(name: str, impl, steps: int) -> dict:
    if name == FLOOR:
        loss = impl.loop.step().item()
        ok = math.isfinite(loss)
        return {"checked": False, "correct": ok, "problems": [] if ok else [f"floor loss is {loss}"],
                "check_losses": [loss]}
    losses, x_adv, x = impl.check(steps)
    return check_training(losses, x_adv, x, EPS)


# ----------------------------------------------------------------------------- timing


def synchronize(device: str) -> None:
    if harness.device_type(device) == "cuda":
        torch.cuda.synchronize(torch.device(device))


def time_rounds(impls: Dict[str, object], device: str, steps: int, rounds: int) -> Dict[str, dict]:
    """`rounds` interleaved rounds of `steps` training steps per implementation; returns
    {name: timing} or {name: {"error": ...}} for one that raised (out of memory, say)."""
    per_step: Dict[str, List[float]] = {name: [] for name in impls}
    errors: Dict[str, str] = {}
    for _ in range(rounds):
        for name, impl in impls.items():
            if name in errors:
                continue
            try:
                synchronize(device)
                t0 = time.perf_counter()
                impl.run(steps)
                synchronize(device)
                per_step[name].append((time.perf_counter() - t0) / steps)
            except Exception as exc:
                errors[name] = harness.error_text(exc)
    out = {name: {"error": err} for name, err in errors.items()}
    for name, ts in per_step.items():
        if ts and name not in errors:
            q1, median, q3 = torch.tensor(ts, dtype=torch.float64).quantile(
                torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
            out[name] = {"step_time_s": median, "iqr_s": q3 - q1, "step_times_s": ts, "rounds": len(ts),
                         "steps_per_round": steps}
    return out


# ----------------------------------------------------------------------------- one case


def base_record(case: TrainCase, plan: Plan) -> dict:
    spec = case.spec
    return {"case": case.name, "kind": case.kind, "recipe": spec.recipe, "model": case.model, "batch": case.batch,
            "image_shape": list(case.image_shape), "device": case.device, "dtype": harness.dtype_name(case.dtype),
            "channels_last": case.channels_last, "eps": EPS, "alpha": spec.alpha, "attack_steps": spec.attack_steps,
            "fwd_bwd_per_step": spec.attack_steps + 1, "epoch_images": EPOCH_IMAGES,
            "steps_per_epoch": steps_per_epoch(case.batch), "data_images": plan.data_images,
            "check_steps": plan.check_steps, "warmup_steps": plan.warmup_steps,
            "implementations": {}, "ratios": {}, "speedup_of_fused": {}}


def run_case(case: TrainCase, plan: Plan, options: harness.Options) -> dict:
    record = base_record(case, plan)
    entries = record["implementations"]
    try:
        work = make_workload(case, plan)
    except harness.Unsupported as exc:  # by design (WRN-34-10 on the CPU): skipped, with the reason
        record["skipped"] = str(exc)
        for name in IMPLEMENTATIONS:
            entries[name] = {"skipped": str(exc)}
        return record
    except Exception as exc:
        record["error"] = "workload failed: " + harness.error_text(exc)
        return record
    built: Dict[str, object] = {}
    try:
        for name, builder in BUILDERS.items():
            entry = entries[name] = {"what": builder.what, **implementation_settings(case, name)}
            try:
                impl = builder(case, work, plan)
            except harness.Unsupported as exc:
                entry["skipped"] = str(exc)
                continue
            except Exception as exc:
                entry["error"] = harness.error_text(exc)
                continue
            built[name] = impl
            try:  # the check is also the first warm-up
                entry.update(check_implementation(name, impl, plan.check_steps))
            except Exception as exc:
                entry["error"] = harness.error_text(exc)
        runnable = {n: impl for n, impl in built.items() if entries[n].get("correct")}
        if plan.warmup_steps:
            for name, impl in list(runnable.items()):
                try:
                    impl.run(plan.warmup_steps)
                except Exception as exc:
                    entries[name]["error"] = harness.error_text(exc)
                    del runnable[name]
            synchronize(case.device)
        rounds = options.rounds or plan.rounds
        for name, timing in time_rounds(runnable, case.device, plan.timed_steps, rounds).items():
            entries[name].update(timing)
    finally:
        for impl in built.values():
            try:
                impl.close()
            except Exception:
                pass
        del built, work
        if harness.device_type(case.device) == "cuda":
            torch.cuda.empty_cache()
    derive(record)
    return record


def derive(record: dict) -> None:
    """images/s, seconds per epoch and the ratios of one case."""
    impls = record["implementations"]
    t = {name: e["step_time_s"] for name, e in impls.items() if e.get("step_time_s")}
    for name, seconds in t.items():
        impls[name]["images_per_s"] = record["batch"] / seconds
        impls[name]["seconds_per_epoch"] = seconds * record["steps_per_epoch"]
    main, eager, floor = t.get(MAIN), t.get(EAGER), t.get(FLOOR)
    record["ratios"] = {
        "eager_over_fastrobust": eager / main if eager and main else None,
        "fastrobust_over_floor": main / floor if main and floor else None,
        "eager_over_floor": eager / floor if eager and floor else None,
    }
    # the harness plot's key: t_impl / t_fastrobust
    record["speedup_of_fused"] = {name: s / main for name, s in t.items() if name != MAIN} if main else {}


# ----------------------------------------------------------------------------- the suite


def description(device: str) -> str:
    return (f"s/epoch = s/step x ceil({EPOCH_IMAGES:,}/batch); standard, FGSM-RS, PGD-10 AT; "
            f"Trainer vs eager fp32 vs (k+1) fwd/bwd floor")


def run_suite(device: str, dtypes: Optional[Iterable[torch.dtype]], options: harness.Options) -> dict:
    from .pgd import pgd_ops_backend

    plan = plan_for(device, options.quick)
    cases = make_cases(device, dtypes, options.quick)
    metadata = results.collect_metadata(device, options)
    metadata.update(
        pgd_ops_backend=pgd_ops_backend(), cudnn_benchmark=torch.backends.cudnn.benchmark,
        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32, matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        timed_steps=plan.timed_steps, rounds=options.rounds or plan.rounds, warmup_steps=plan.warmup_steps,
        check_steps=plan.check_steps, epoch_images=EPOCH_IMAGES,
        extrapolation=f"seconds_per_epoch = step_time_s x ceil({EPOCH_IMAGES} / batch); step_time_s is the median "
                      f"over rounds of (time of timed_steps training steps) / timed_steps; not a measured epoch",
        optimizer={"name": "SGD", "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
                   "schedule": "constant"},
        attack={"eps": EPS, "pgd_alpha": PGD_ALPHA, "pgd_steps": PGD_STEPS, "fgsm_alpha": FGSM_ALPHA,
                "random_start": True},
        targets=TARGETS)
    result = {"suite": NAME, "description": description(device), "device": device, "metadata": metadata,
              "complete": False, "cases": []}
    for i, case in enumerate(cases, 1):
        if options.verbose:
            print(f"[{NAME} {i}/{len(cases)}] {case.name}", file=sys.stderr, flush=True)
        with warnings.catch_warnings():
            # Until the kernels are built the ops run their reference: pgd_ops_backend says so.
            warnings.filterwarnings("ignore", message=".*runs its pure-PyTorch reference", category=RuntimeWarning)
            result["cases"].append(run_case(case, plan, options))
        finish(result)
        write_data(result, options.out_dir, options.quick)
    result["complete"] = True
    return result


def run(device: str, dtypes: Optional[List[torch.dtype]], options: harness.Options) -> bool:
    """Runs the suite, writes JSON/CSV/PNG, prints the table; True when no implementation
    failed its check or raised (skipped ones are fine; the targets do not decide it)."""
    start = time.perf_counter()
    result = run_suite(device, dtypes, options)
    result["wall_time_s"] = time.perf_counter() - start
    written = write_results(result, options.out_dir, options.quick)
    print(format_table(result))
    print(f"{NAME}: {len(result['cases'])} cases in {result['wall_time_s']:.0f} s")
    for kind, path in written.items():
        print(f"  {kind}: {path}")
    return not failures(result)
