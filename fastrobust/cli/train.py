"""`fastrobust train`: adversarial training (fastrobust.train) followed by the robustness
evaluation (fastrobust.eval) of the final model, everything written under one folder.

Options map onto fastrobust.train.TrainConfig: an option left out takes the --config file's
value (fastrobust.cli.config_file), else TrainConfig's default (the data set's, or the
recipe's: see DATASET_DEFAULTS), so the defaults live in one place.
The command line adds the model options (--activation, --denoise, --cifs, --first-stride) and
the evaluation after training (--attacks, --eval-n, --checks, --no-eval).
"""
from __future__ import annotations

import dataclasses
import datetime
import inspect
import os
import shlex
import sys
import time
from typing import Any, Dict

from .common import (AMP_CHOICES, HelpFormatter, check_device, eps_type, fmt_eps, json_object, nonnegative_int,
                     positive_int)
from .config_file import read_config_file
from .errors import CLIError, one_line
from .evaluation import add_eval_options, check_transfer_attacks, run_evaluation

DESCRIPTION = """\
Adversarial training, then the robustness evaluation of the final model.

With no options: PGD-AT on scikit-learn's 8x8 digits (embedded, no download) of the small CNN
with Sparta activations and a Gaussian non-local-means denoising block after layer2, 10 epochs
on the CPU (a few minutes on 2 cores), then clean accuracy and the pgd20 -> apgd-ce -> apgd-dlr
cascade at eps 0.15 on the digits test split, with the gradient-masking checks.

Everything goes under --out (default runs/DATA-RECIPE-MODEL-YYYYmmdd-HHMMSS):
  config.json  command.txt  last.pt  best.pt  metrics.jsonl  results.json  curves.png
  eval/report.json  eval/report.csv  eval/report.md  eval/*.png (checks' plots)

Runs are never lost: a new run into a folder that holds one (config.json, last.pt, best.pt or
metrics.jsonl) is refused, nothing written, unless --resume continues it or --overwrite moves
the old folder aside to OUT.old-YYYYmmdd-HHMMSS (never deleted). Checkpoints carry a content
hash: a corrupted one is refused when loaded.

Resuming (--resume) continues a run bit for bit, so the options must be the run's except:
  --epochs      more, to extend a finished run (or fewer, not below the epochs done), when no
                trained epoch depends on the total: not with the onecycle schedule (the digits
                default; its ramp spans all epochs), not with a recipe that scales with the
                epochs (fat's default tau milestones), not after the overfitting guard stopped
                the run; a piecewise run must keep its milestones (give them with --milestones:
                the default ones are 50 % and 75 % of the epochs and would move)
  --milestones  those the run has not reached yet
  --out --device --threads --compile --data-dir --progress --plot --log-every, and the
  evaluation after training (--attacks, --eval-n, --checks, ...)
metrics.jsonl is appended to, never truncated; config.json holds the latest invocation's options.

Config files (--config FILE, .toml or .json) hold TrainConfig's options under the names of
config.json (the evaluation after training stays on the command line). An option given on the
command line wins over the file, the file over the defaults; --model-options, --data-options
and --recipe-options change the file's dicts key by key. A file's model_options are taken as
complete (sparta and --denoise auto are only added when it has none), its out is the default
--out, its resume and overwrite are ignored. A run's config.json holds every option resolved
(epochs, lr, milestones, ...), so it repeats the run: give another --out; changing --epochs
keeps its milestones.
"""

EPILOG = """\
examples:
  fastrobust train
  fastrobust train --epochs 3 --out runs/quick
  fastrobust train --data cifar10 --data-dir ~/data --model preact_resnet18 --activation sparta \\
      --denoise layer3:gaussian --amp bf16 --out runs/cifar-pgd
  fastrobust train --data cifar10 ... --resume runs/cifar-pgd/last.pt   # continue (same options)
  fastrobust train --schedule piecewise --milestones 5 8 --epochs 10 --out runs/long
  fastrobust train --schedule piecewise --milestones 5 8 --epochs 20 --out runs/long --resume   # extend
  fastrobust train --epochs 3 --out runs/quick --overwrite   # the old runs/quick -> runs/quick.old-...
  fastrobust train --config run.toml --epochs 3      # run.toml: recipe = "trades", epochs = 20, ...
  fastrobust train --config runs/quick/config.json --out runs/again   # the same run again
  fastrobust eval runs/quick/last.pt --attacks pgd20,apgd-t
  fastrobust train --model ode_net --model-options '{"ode": "tisode"}' --recipe tisode   # TisODE
  fastrobust train --model ode_net --recipe tisode --recipe-options '{"inner": "pgd"}'   # PGD-AT of it
  fastrobust train --recipe jsigr --denoise none --activation relu --out runs/jsigr       # J-SIGR-style
  fastrobust train --recipe standard --denoise none --activation relu --out runs/std
  fastrobust train --recipe hgd --target runs/std/last.pt --recipe-options '{"guide": "logits"}'
  fastrobust train --recipe ladder --target runs/std/last.pt --schedule constant --lr 0.01
"""

SMALL_CNN_DENOISE = ("layer2", "gaussian")  # the embedded default's denoising block
DEFAULT_ACTIVATION = "sparta"
FIXED_ACTIVATION = {"ode_net": "relu"}  # models whose activation is part of their definition


def _field_default(name: str):
    from ..train.config import TrainConfig

    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]


def _per_data(name: str) -> str:
    """'digits 10, cifar10 200, ...': a DATASET_DEFAULTS option for the help."""
    from ..train.config import DATASET_DEFAULTS

    parts = []
    for data, values in DATASET_DEFAULTS.items():
        v = values.get(name)
        parts.append(f"{data} {fmt_eps(v) if name == 'eps' else v}")
    return ", ".join(parts)


def denoise_type(text: str):
    """STAGE[,STAGE]:MODE, none or auto."""
    import argparse

    from ..nn.nlm import MODES

    key = text.strip()
    if key.lower() in ("none", "auto"):
        return key.lower()
    stages, sep, mode = key.rpartition(":")
    names = [s.strip() for s in stages.split(",") if s.strip()]
    if not sep or not names or mode not in MODES:
        raise argparse.ArgumentTypeError(f"expected STAGE[,STAGE]:MODE with MODE one of {', '.join(MODES)} "
                                         f"(e.g. layer3:gaussian), none or auto; got {text!r}")
    return (names[0] if len(names) == 1 else names, mode)


def add_parser(sub) -> None:
    import argparse

    from ..data import DATASETS
    from ..models import list_models
    from ..models.activations import ACTIVATIONS
    from ..train.config import OPTIMIZERS, SCHEDULES
    from ..train.recipes import RECIPES

    p = sub.add_parser("train", help="adversarial training, then the robustness evaluation",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    d = _field_default
    bool_opt = argparse.BooleanOptionalAction

    p.add_argument("--config", metavar="FILE",
                   help="training options from a .toml or .json file under TrainConfig's names, e.g. epochs = 5, "
                        "[model_options] width = 16 (a run's config.json is one); the command line wins over it, "
                        "key by key in the JSON options; see 'Config files' above (default: none)")

    # options default to None ("not given"): the file, then TrainConfig, fill them in
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATASETS, help=f"data set (default: {d('data')})")
    g.add_argument("--data-dir", metavar="DIR", help="folder holding cifar-10-batches-py/ or cifar-100-python/ "
                   "(default: $FASTROBUST_DATA_DIR, else ./data); nothing is downloaded")
    g.add_argument("--data-options", type=json_object, metavar="JSON",
                   help="load_dataset options, e.g. '{\"seed\": 1}' (default: none)")
    g.add_argument("--subset", type=positive_int, metavar="N", help="train on the first N images (default: all)")

    g = p.add_argument_group("model")
    g.add_argument("--model", choices=list_models(), help=f"architecture (default: the data set's: {_per_data('model')})")
    g.add_argument("--activation", choices=ACTIVATIONS, default=None,
                   help="activation (default: sparta; relu for ode_net, whose activation is fixed)")
    g.add_argument("--denoise", type=denoise_type, metavar="STAGE[,STAGE]:MODE",
                   help="non-local-means denoising blocks after these stages, e.g. layer3:gaussian or "
                        "layer2,layer3:median; none; auto (default): layer2:gaussian for small_cnn, none otherwise")
    g.add_argument("--cifs", action=bool_opt, help="CIFS variant (resnet18 only; default: off)")
    g.add_argument("--first-stride", type=positive_int, metavar="S",
                   help="stride of the first convolution (default: the model's, 1)")
    g.add_argument("--model-options", type=json_object, metavar="JSON",
                   help="more fastrobust.models.create options, e.g. '{\"width\": 64}' (default: none)")

    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", choices=sorted(RECIPES),
                   help=f"training recipe (default: {d('recipe')})")
    g.add_argument("--recipe-options", type=json_object, metavar="JSON",
                   help="the recipe's own options, e.g. '{\"beta\": 6}' for trades (default: none)")
    g.add_argument("--target", metavar="CHECKPOINT",
                   help="the trained classifier the recipe builds on (hgd, ladder): its data set, model and model options "
                        "come from this checkpoint (default: none)")
    g.add_argument("--eps", type=eps_type, metavar="EPS",
                   help=f"L-inf radius in pixel units, e.g. 0.15 or 8/255, for training and evaluation "
                        f"(default: the data set's: {_per_data('eps')})")
    g.add_argument("--alpha", type=eps_type, metavar="A", help="training attack step (default: the recipe's)")
    g.add_argument("--steps", type=nonnegative_int, metavar="K", help="training attack steps (default: the recipe's)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, metavar="N", help=f"default: the data set's: {_per_data('epochs')}")
    g.add_argument("--batch-size", type=positive_int, metavar="B",
                   help=f"global batch size (default: {_per_data('batch_size')})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd (momentum, coupled weight decay) or adam (betas "
                   "(momentum, 0.999)) (default: sgd; hgd: adam)")
    g.add_argument("--lr", type=float, metavar="LR", help=f"peak learning rate (default: {_per_data('lr')})")
    g.add_argument("--momentum", type=float, metavar="M", help=f"default: {d('momentum')}")
    g.add_argument("--nesterov", action=bool_opt, help="Nesterov momentum (default: off)")
    g.add_argument("--weight-decay", type=float, metavar="WD", help=f"default: {_per_data('weight_decay')}")
    g.add_argument("--schedule", choices=SCHEDULES, help=f"lr schedule (default: {_per_data('schedule')}; "
                   "fgsm: onecycle; hgd: piecewise)")
    g.add_argument("--milestones", type=float, nargs="+", metavar="EPOCH",
                   help="piecewise schedule: epochs of the lr drops (default: 50%% and 75%% of the epochs; hgd: 60%% and 90%%)")
    g.add_argument("--lr-gamma", type=float, metavar="G", help=f"piecewise lr factor (default: {d('lr_gamma')})")
    g.add_argument("--onecycle-peak", type=float, metavar="F",
                   help=f"onecycle: fraction of the iterations to the peak (default: {d('onecycle_peak')})")
    g.add_argument("--max-steps-per-epoch", type=positive_int, metavar="N",
                   help="cut every epoch after N batches (quick runs; default: no cut)")

    g = p.add_argument_group("speed and device")
    g.add_argument("--device", help="auto (CUDA when available), cpu, cuda, cuda:N "
                   "(default: auto)")
    g.add_argument("--amp", choices=AMP_CHOICES, help="training autocast: none (float32, default), bf16, fp16")
    g.add_argument("--channels-last", action=bool_opt, help="channels-last memory format (default: off)")
    g.add_argument("--compile", action=bool_opt, help="torch.compile the training model (default: off)")
    g.add_argument("--threads", type=nonnegative_int, metavar="N",
                   help=f"CPU threads, 0: torch's default (default: {_per_data('threads')})")
    g.add_argument("--seed", type=nonnegative_int, metavar="S", help=f"default: {d('seed')}")

    g = p.add_argument_group("run folder")
    g.add_argument("--out", metavar="DIR", help="run folder (default: runs/DATA-RECIPE-MODEL-YYYYmmdd-HHMMSS)")
    g.add_argument("--resume", nargs="?", const=True, metavar="CHECKPOINT",
                   help="continue the run in --out from its last.pt, or from CHECKPOINT (its folder is then the "
                        "default --out; another --out must hold no run); the other options must match the run's "
                        "but those listed above: --epochs (within limits), unreached --milestones, --out, --device, "
                        "--threads, --compile, --data-dir, --progress, --plot, --log-every, the evaluation's "
                        "(default: a new run)")
    g.add_argument("--overwrite", action="store_true",
                   help="a new run even where --out holds one: the old folder is moved aside to "
                        "OUT.old-YYYYmmdd-HHMMSS, never deleted (default: refuse, nothing written)")
    g.add_argument("--progress", action=bool_opt, help="progress bars (default: on)")
    g.add_argument("--plot", action=bool_opt, help="curves.png of the training metrics (default: on)")
    g.add_argument("--tensorboard", action=bool_opt,
                   help="TensorBoard logs in OUT/tensorboard: the training metrics per epoch and the evaluation's "
                        "accuracies and curves (needs the tensorboard package: pip install "
                        "\"fastrobust[tensorboard]\") (default: off)")
    g.add_argument("--log-every", type=positive_int, metavar="N",
                   help=f"batches between progress updates (default: {d('log_every')})")

    g = p.add_argument_group("checks during training")
    g.add_argument("--eval-every", type=nonnegative_int, metavar="N",
                   help=f"test clean / PGD accuracy every N epochs, 0: never (default: {d('eval_every')})")
    g.add_argument("--eval-samples", type=positive_int, metavar="N",
                   help=f"test images of those checks (default: {d('eval_samples')})")
    g.add_argument("--eval-steps", type=nonnegative_int, metavar="K",
                   help=f"PGD steps of those checks (default: {d('eval_steps')})")
    g.add_argument("--final-eval", action=bool_opt,
                   help="the trainer's own PGD-20 on the whole test set at the end (default: off: the "
                        "evaluation after training supersedes it)")
    g.add_argument("--overfit-guard", action=bool_opt,
                   help="stop on catastrophic overfitting and restore the best epoch (default: on for fgsm only)")
    g.add_argument("--guard-threshold", type=float, metavar="F",
                   help=f"accuracy drop that stops training (default: {d('guard_threshold')})")
    g.add_argument("--guard-steps", type=positive_int, metavar="K",
                   help=f"PGD steps of the guard (default: {d('guard_steps')})")
    g.add_argument("--track-clean", action=bool_opt,
                   help="clean accuracy of the training batches (default: on)")

    g = p.add_argument_group("evaluation after training (fastrobust.eval, float32)")
    g.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="skip it (default: evaluate the final model on the test split)")
    add_eval_options(g, prefix="eval-", default_checks="default")
    p.set_defaults(func=run)


# -- options -> TrainConfig ------------------------------------------------------------------

CONFIG_OPTIONS = ("data", "data_dir", "data_options", "subset", "model", "recipe", "recipe_options", "eps", "alpha",
                  "steps", "epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
                  "milestones", "lr_gamma", "onecycle_peak", "max_steps_per_epoch", "amp", "channels_last",
                  "compile", "threads", "device", "seed", "out", "resume", "overwrite", "progress", "plot", "tensorboard",
                  "log_every", "eval_every", "eval_samples", "eval_steps", "final_eval", "overfit_guard", "guard_threshold",
                  "guard_steps", "track_clean")


def config_from_args(args):
    """The TrainConfig of the options and of the --config file and the folder of the run: an
    option given on the command line wins over the file, the file over the defaults
    (TrainConfig's, the data set's, the recipe's)."""
    from ..train.config import TrainConfig

    from_file = read_config_file(args.config) if args.config else {}
    given = {k: getattr(args, k) for k in CONFIG_OPTIONS if getattr(args, k) is not None}
    if "milestones" in given:
        given["milestones"] = tuple(given["milestones"])
    if given.get("amp") == "none":
        given["amp"] = None  # over the file's too
    values = {**from_file, **given}
    for name in ("data_options", "recipe_options"):  # key by key, as --model-options
        if name in from_file and name in given:
            values[name] = {**from_file[name], **given[name]}
    values.setdefault("final_eval", False)  # the evaluation after training supersedes it
    options = values["model_options"] = _model_options(args, from_file.get("model_options", {}))
    if args.target is not None:
        options = _target_values(args, values)
    resume = values.get("resume")
    if "out" not in values:
        if isinstance(resume, str):
            values["out"] = os.path.dirname(os.path.abspath(resume))
        elif resume is True:
            raise CLIError("--resume without a checkpoint needs --out, the folder of the run to continue")
    config = TrainConfig.from_dict(values)
    resolved = config.resolved()
    # the command line's model defaults; a file's model_options are complete, as config.json records them
    if args.target is not None or "model_options" not in from_file:
        options.setdefault("activation", FIXED_ACTIVATION.get(resolved.model, DEFAULT_ACTIVATION))
    if args.target is None and "model_options" not in from_file and args.denoise in (None, "auto") and \
            resolved.model == "small_cnn":
        options.setdefault("denoise", SMALL_CNN_DENOISE)
    config = config.replace(model_options=options)
    if "out" not in values:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        config = config.replace(out=os.path.join("runs", f"{resolved.data}-{resolved.recipe}-{resolved.model}-{stamp}"))
    return config


def _model_options(args, from_file: Dict[str, Any]) -> Dict[str, Any]:
    """The model options: the file's, then --model-options key by key, then the flags that set
    one of them (--activation yields to an activation in --model-options, as it always has;
    --no-cifs and --denoise none remove the file's)."""
    mine = args.model_options or {}
    options = {**from_file, **mine}
    if args.activation is not None and "activation" not in mine:
        options["activation"] = args.activation
    if args.denoise == "none" and "denoise" not in mine:
        options.pop("denoise", None)
    elif args.denoise not in (None, "none", "auto"):
        options["denoise"] = args.denoise
    if args.cifs:
        options["cifs"] = True
    elif args.cifs is False:
        options.pop("cifs", None)
    if args.first_stride is not None:
        options["first_stride"] = args.first_stride
    return options


def _target_values(args, values: Dict[str, Any]) -> Dict[str, Any]:
    """--target: the checkpoint's data set, model and model options into values (over a config
    file's; conflicting options on the command line are errors), the checkpoint's path into the
    recipe's options; the model options."""
    from ..train.checkpoint import CheckpointError, load_checkpoint
    from ..train.config import ConfigError, TrainConfig
    from ..train.recipes import RECIPES

    recipe = values.get("recipe", _field_default("recipe"))
    if "target" not in inspect.signature(RECIPES[recipe].__init__).parameters:
        raise CLIError(f"--target: the recipe {recipe!r} builds on no trained classifier (hgd and ladder do)")
    try:
        target = TrainConfig.from_dict(load_checkpoint(args.target)["config"]).resolved()
    except (CheckpointError, ConfigError, TypeError, KeyError) as exc:
        raise CLIError(f"--target {args.target}: {one_line(exc)}") from exc
    if not isinstance(target.model, str):
        raise CLIError(f"--target {args.target}: trained with a custom nn.Module, which cannot be rebuilt")
    for flag, (mine, theirs) in {"--model": (args.model, target.model), "--data": (args.data, target.data)}.items():
        if mine is not None and mine != theirs:
            raise CLIError(f"{flag} {mine}: the --target classifier was trained with {flag} {theirs}; leave "
                           f"{flag} out")
    if args.model_options or args.activation or args.cifs or args.first_stride or args.denoise not in (None, "auto"):
        raise CLIError("--target: the classifier's model options come from its checkpoint; leave --model-options, "
                       "--activation, --denoise, --cifs and --first-stride out")
    if "target" in (args.recipe_options or {}):
        raise CLIError("--target is given twice (also in --recipe-options); give it once")
    values.update(model=target.model, data=target.data, data_options=dict(target.data_options))
    values["recipe_options"] = {**(values.get("recipe_options") or {}), "target": os.path.abspath(args.target)}
    values["model_options"] = dict(target.model_options)
    return values["model_options"]


def describe_model(name: str, options: Dict[str, Any]) -> str:
    parts = [f"activation {options.get('activation', 'relu')}"]
    denoise = options.get("denoise")
    if denoise:
        stages = denoise[0] if isinstance(denoise[0], str) else ",".join(denoise[0])
        parts.append(f"denoise {stages}:{denoise[1]}")
    if options.get("cifs"):
        parts.append("cifs")
    if options.get("first_stride"):
        parts.append(f"first stride {options['first_stride']}")
    return f"{name} ({', '.join(parts)})"


# -- the command -----------------------------------------------------------------------------

def run(args) -> int:
    from ..train.checkpoint import CheckpointError
    from ..train.config import ConfigError
    from ..train.trainer import Trainer

    if args.evaluate:
        check_transfer_attacks(args.attacks, False)  # train has no --surrogate: say so before training
    try:
        config = config_from_args(args)
        check_device(config.device)  # a clear error before anything is built
        trainer = Trainer(config)  # refuses a folder holding another run before writing anything
    except (ConfigError, CheckpointError, FileNotFoundError) as exc:
        raise CLIError(one_line(exc)) from exc
    except (ValueError, TypeError) as exc:  # the options' values; other TypeErrors are bugs
        if str(exc).startswith("load_dataset("):  # --data-options typed by hand
            raise CLIError(f"--data-options: {one_line(exc)}") from exc
        if isinstance(exc, TypeError):
            raise
        raise CLIError(one_line(exc)) from exc
    cfg = trainer.config
    main_rank = trainer.dist.is_main  # under torchrun only rank 0 prints, evaluates and writes
    model_desc = describe_model(cfg.model, cfg.model_options)
    try:
        if main_rank:
            print(f"training {model_desc} on {cfg.data} with {cfg.recipe}, eps={fmt_eps(cfg.eps)}, {cfg.epochs} "
                  f"epochs, batch {cfg.batch_size}, on {trainer.dist.device} -> {cfg.out}"
                  + (f" (resuming after epoch {trainer.epoch})" if trainer.resumed_from else ""),
                  file=sys.stderr, flush=True)
            _write_command(cfg.out, getattr(args, "argv", None))
        t0 = time.perf_counter()
        try:
            result = trainer.fit()
        except FloatingPointError as exc:
            raise CLIError(one_line(exc)) from exc
        except KeyboardInterrupt:
            if main_rank:
                saved = (f"last.pt holds epoch {trainer.epoch}; continue with: "
                         f"{resume_command(getattr(args, 'argv', None), cfg.out)}") if trainer.epoch else \
                    "no epoch finished, nothing saved"
                print(f"\ninterrupted in epoch {trainer.epoch + 1}: {saved}", file=sys.stderr)
            return 130
        if not main_rank:
            return 0
        _print_training(result, cfg, trainer, time.perf_counter() - t0)
        files = {"checkpoint": result.checkpoint, "metrics": result.metrics_path, "curves": result.plot_path}
        if args.evaluate:
            x, y = trainer.test_data
            report, paths = run_evaluation(result.model, x, y, args=args, eps=cfg.eps, device=trainer.dist.device,
                                           model_name=model_desc, data_name=f"{cfg.data} test",
                                           out_dir=os.path.join(cfg.out, "eval"), threads=cfg.threads,
                                           progress=cfg.progress,
                                           metadata={"run": cfg.out, "checkpoint": result.checkpoint,
                                                     "epochs_trained": len(result.history), "recipe": cfg.recipe,
                                                     "train_eps": cfg.eps})
            files.update({f"report ({k})" if k in ("json", "csv", "md") else k: v for k, v in paths.items()})
            if trainer.tensorboard is not None:
                trainer.tensorboard.evaluation(report.to_dict(), len(result.history),
                                               {k: v for k, v in paths.items() if k not in ("json", "csv", "md")})
        if trainer.tensorboard is not None:
            files["tensorboard"] = trainer.tensorboard.log_dir
        print("\n".join(f"{k}: {v}" for k, v in files.items() if v))
    finally:
        trainer.close()
    return 0


def _print_training(result, cfg, trainer, seconds: float) -> None:
    m = result.metrics
    done = len(result.history)
    line = f"trained in {seconds:.0f} s ({done} epoch{'s' if done != 1 else ''} recorded)"
    if m.get("test_clean_acc") is not None:
        n = min(cfg.eval_samples or 10 ** 9, trainer.test_data[1].shape[0])
        line += (f"; last check on {n} test images: clean {100 * m['test_clean_acc']:.1f}%, "
                 f"PGD-{cfg.eval_steps} {100 * m['test_pgd_acc']:.1f}%")
    if result.stopped_early:
        line += f"; stopped early at epoch {result.stopped_early} (best epoch restored)"
    print(line)
    if m.get("final_test_clean_acc") is not None:
        print(f"final: clean {100 * m['final_test_clean_acc']:.2f}%, PGD-20 {100 * m['final_test_pgd_acc']:.2f}% "
              f"({m.get('final_eval')})")


def resume_command(argv, out: str) -> str:
    """The command line that continues this run (the same options, --resume its last.pt)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--resume" or a.startswith("--resume=") for a in argv):
        argv += ["--resume", os.path.join(out, "last.pt")]
    return shlex.join(["fastrobust"] + argv)


def _write_command(out: str, argv) -> None:
    """command.txt: the command line of the run (a line per invocation: resumes append)."""
    os.makedirs(out, exist_ok=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    with open(os.path.join(out, "command.txt"), "a") as f:
        f.write(shlex.join(["fastrobust"] + argv) + "\n")
