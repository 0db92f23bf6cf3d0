"""`fastrobust eval CHECKPOINT`: the robustness evaluation of a training checkpoint;
`fastrobust eval --model SPEC --data NAME` (or --model-file PATH.py:FACTORY): of any model.

A checkpoint's model is rebuilt from the configuration it stores (fastrobust.train writes it:
model name and options, data set, recipe), its weights loaded, and it is evaluated on the test
split of the checkpoint's data set. Another model is built from its spec (model_spec: torchvision,
timm, robustbench's model zoo, the package's registry, a factory in a Python file), its weights
read from --weights, and evaluated on the test split of --data. Either way
fastrobust.eval.evaluate runs, the table is printed and the report written.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from torch import nn

from .common import (AMP_CHOICES, AMP_DTYPES, HelpFormatter, eps_type, fmt_eps, json_object,
                     nonnegative_int, positive_int)
from .errors import CLIError, one_line
from .evaluation import add_eval_options, check_transfer_attacks, run_evaluation
from .model_spec import model_file_type, model_spec_type
from .ranks import run_on_ranks

DESCRIPTION = """\
Robustness evaluation of a `fastrobust train` checkpoint (last.pt or best.pt), or of any model
(--model SPEC or --model-file PATH.py:FACTORY, with --data, --eps and usually --weights).

A checkpoint's model is rebuilt from its stored configuration and evaluated on the test split
of its data set: clean accuracy, then the attack cascade (each attack on the images still
robust), then the gradient-masking checks. The table is printed; report.json, report.csv,
report.md and the checks' plots are written to --out (default: CHECKPOINT's folder/eval for
last.pt, CHECKPOINT's folder/eval-NAME for another checkpoint NAME.pt).

The checkpoint is verified first: a content hash mismatch (a corrupted file) or weights that
are NaN or inf stop the command with an error; no number is reported for such a model.

Any model: --model SPEC builds the architecture (nothing is downloaded), --weights FILE loads its
state_dict (torch.load with weights_only=True; a plain state_dict or one under "state_dict" or
"model"; a DataParallel "module." prefix is stripped; a file that does not fit lists the missing
and unexpected keys), and it is evaluated on the test split of --data. SPEC is one of
  torchvision:NAME    torchvision.models.get_model(NAME, weights=None, num_classes=K)
  timm:NAME           timm.create_model(NAME, pretrained=False, num_classes=K, in_chans=channels)
  robustbench:NAME    the architecture of robustbench's model zoo entry NAME for --data and Linf
                      (robustbench:THREAT/NAME, robustbench:DATASET/THREAT/NAME for others; needs
                      the robustbench package, but not its downloads)
  fastrobust:NAME     the package's own models (fastrobust.models.create)
and --model-file PATH.py:FACTORY calls FACTORY(num_classes=K) (FACTORY() if it takes no
num_classes) from that file. K: --num-classes, default the data set's classes. fastrobust feeds
[0, 1] pixels: a model trained on normalised inputs needs --mean and --std, which put
Normalize(mean, std) in front of it (default: no normalisation). Without --weights the model is
evaluated as initialised (a warning says so; for smoke tests). --eps is required, and the
report records the spec, the weights' path and sha256. Default --out: ./eval-SPEC (e.g.
eval-torchvision-resnet18; eval-FILE-FACTORY for --model-file).
"""

EPILOG = """\
examples:
  fastrobust eval runs/digits-pgd-small_cnn-20250101-120000/last.pt
  fastrobust eval runs/cifar-pgd/best.pt --attacks pgd20,apgd-ce,apgd-t --n 1000 --eps 8/255 --device cuda
  fastrobust eval runs/digits-tisode/last.pt --attacks fgsm,tisode-pgd,pgd20 --eps 0.3 --noise 100/255
  fastrobust eval runs/digits-jsigr/last.pt --attacks transfer,pgd20 --surrogate runs/digits-standard/last.pt
  fastrobust eval runs/digits-hgd/last.pt --oblivious --out runs/digits-hgd/eval-oblivious
  fastrobust eval --model torchvision:resnet18 --weights resnet18.pt --data cifar10 --eps 8/255 \\
      --mean 0.4914 0.4822 0.4465 --std 0.2470 0.2435 0.2616
  fastrobust eval --model timm:resnet18 --weights timm-resnet18.pt --data cifar100 --eps 8/255
  fastrobust eval --model robustbench:Carmon2019Unlabeled --weights models/cifar10/Linf/Carmon2019Unlabeled.pt \\
      --data cifar10 --eps 8/255
  fastrobust eval --model fastrobust:small_cnn --weights small_cnn.pt --data digits --eps 0.1
  fastrobust eval --model-file my_models.py:make_net --weights net.pt --data digits --eps 0.1
  torchrun --nproc_per_node 2 -m fastrobust.eval runs/cifar-pgd/best.pt --attacks pgd20,apgd-ce --batch-size 250
"""

# The options that describe a model given by --model / --model-file (a checkpoint brings its own).
SPEC_OPTIONS = {"--data": "data", "--data-options": "data_options", "--weights": "weights",
                "--num-classes": "num_classes", "--mean": "mean", "--std": "std"}


def add_parser(sub) -> None:
    from ..data import DATASETS

    p = sub.add_parser("eval", help="robustness evaluation of a training checkpoint or of any model",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?",
                   help="a checkpoint written by fastrobust train (or --model / --model-file instead)")
    g = p.add_argument_group("any model (instead of CHECKPOINT)")
    g.add_argument("--model", type=model_spec_type, metavar="SPEC",
                   help="torchvision:NAME, timm:NAME, robustbench:NAME or fastrobust:NAME (see above; default: none)")
    g.add_argument("--model-file", type=model_file_type, metavar="PATH.py:FACTORY",
                   help="a Python file and the function or class in it that builds the model (default: none)")
    g.add_argument("--weights", metavar="FILE",
                   help="the model's state_dict (default: none, the model as initialised, with a warning)")
    g.add_argument("--data", choices=DATASETS, help="the data set whose test split is evaluated (default: none; "
                                                    "required with --model)")
    g.add_argument("--data-options", type=json_object, metavar="JSON",
                   help="options of the data set as JSON, e.g. '{\"n\": 8}' for synthetic (default: none)")
    g.add_argument("--num-classes", type=positive_int, metavar="K",
                   help="the model's outputs (default: the data set's classes)")
    g.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="per-channel mean (one value, or one per channel) of the inputs the model was trained on; "
                        "with --std, Normalize(mean, std) goes in front of the model (default: none, no "
                        "normalisation: the model sees [0, 1] pixels)")
    g.add_argument("--std", type=float, nargs="+", metavar="S",
                   help="per-channel standard deviation, with --mean (default: none)")
    g = p.add_argument_group("evaluation")
    add_eval_options(g, prefix="", default_checks="default")
    g.add_argument("--eps", type=eps_type, metavar="EPS",
                   help="L-inf radius, e.g. 0.15 or 8/255 (default: the checkpoint's training eps; required with "
                        "--model)")
    g.add_argument("--amp", choices=AMP_CHOICES, default="none",
                   help="autocast of the clean pass and the attacks (default: none, float32)")
    g.add_argument("--surrogate", action="append", default=[], metavar="CHECKPOINT",
                   help="a checkpoint of a surrogate model (repeat for several: their averaged logits) that the "
                        "transfer attack preset (--attacks transfer) crafts on; trained on the same data set as "
                        "the model (default: none)")
    g.add_argument("--oblivious", action="store_true",
                   help="for a denoiser checkpoint (fastrobust train --recipe hgd): craft the attacks on its classifier "
                        "alone and judge them on the whole model (HGD's own threat model, which ignores the denoiser; "
                        "default: off, the attacks go through denoiser and classifier)")
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR",
                   help="report folder (default: CHECKPOINT's folder/eval; with --model ./eval-SPEC; see above)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="CIFAR folder (default: the checkpoint's, else $FASTROBUST_DATA_DIR, else ./data)")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N (default: auto)")
    g.add_argument("--threads", type=nonnegative_int, metavar="N",
                   help="CPU threads, 0: torch's default (default: the checkpoint's run setting, digits 1; with "
                        "--model torch's default)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars (default: on)")
    g.add_argument("--distributed", action="store_true",
                   help="under torchrun: the ranks share the batches of the clean pass and of every attack and "
                        "report the numbers of a single process (timings aside); only rank 0 prints and writes; "
                        "`torchrun --nproc_per_node K -m fastrobust.eval ...` implies it (default: off)")
    p.set_defaults(func=run)


def default_out(checkpoint: str) -> str:
    folder = os.path.dirname(os.path.abspath(checkpoint))
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    return os.path.join(folder, "eval" if stem == "last" else f"eval-{stem}")


def load_model(path: str, device, data_dir=None):
    """(model in eval mode on device, resolved TrainConfig, (x_test, y_test), state) of a
    checkpoint (fastrobust.train.trained.load_trained); CLIError for every problem with the
    file, its config, its weights or its data."""
    from ..train.checkpoint import CheckpointError
    from ..train.trained import load_trained

    try:
        return load_trained(path, device, data_dir)
    except CheckpointError as exc:
        raise CLIError(one_line(exc)) from exc


@dataclass
class Target:
    """What `fastrobust eval` evaluates, from a checkpoint or from a model spec."""
    model: nn.Module  # in eval mode on the device
    x: torch.Tensor
    y: torch.Tensor
    data: str  # the data set's name (a surrogate must be trained on it)
    eps: float
    name: str  # the model in the table and the report
    out: str  # the default --out
    header: str  # the line(s) on stderr before the evaluation
    threads: Optional[int]
    metadata: Dict[str, Any] = field(default_factory=dict)
    attack_model: Optional[nn.Module] = None


def check_model_options(args) -> None:
    """Exactly one model (CHECKPOINT, --model, --model-file) and the options that go with it,
    checked before any work."""
    given = [flag for flag, value in (("CHECKPOINT", args.checkpoint), ("--model", args.model),
                                      ("--model-file", args.model_file)) if value]
    if len(given) != 1:
        raise CLIError("give one model to evaluate: CHECKPOINT, --model SPEC or --model-file PATH.py:FACTORY"
                       + (f", not {' and '.join(given)}" if given else ""))
    spec_options = [flag for flag, dest in SPEC_OPTIONS.items() if getattr(args, dest) is not None]
    if args.checkpoint:
        if spec_options:
            raise CLIError(f"{spec_options[0]}: goes with --model or --model-file; a checkpoint brings its own "
                           "architecture, weights and data")
        return
    if args.oblivious:
        raise CLIError(f"--oblivious: for a denoiser checkpoint (fastrobust train --recipe hgd), not {given[0]}")
    if args.data is None:
        raise CLIError(f"{given[0]} needs --data, the data set to evaluate on")
    if args.eps is None:
        raise CLIError(f"--eps: required with {given[0]} (no training eps to fall back on), e.g. --eps 8/255")


def from_checkpoint(args, device: torch.device) -> Target:
    """The checkpoint's model, data, eps (its training eps unless --eps) and run settings."""
    from .train import describe_model

    model, config, (x, y), state = load_model(args.checkpoint, device, args.data_dir)
    eps = config.eps if args.eps is None else args.eps
    if eps is None:
        raise CLIError(f"checkpoint {args.checkpoint}: no eps stored; pass --eps")
    attack_model = None
    if args.oblivious:
        from ..models import Denoised
        if not isinstance(model, Denoised):
            raise CLIError(f"--oblivious: checkpoint {args.checkpoint} holds no denoiser (a {type(model).__name__}, "
                           "not a fastrobust train --recipe hgd model)")
        attack_model = model.classifier
    epoch, epochs = int(state.get("epoch", 0)), config.epochs
    unfinished = "" if state.get("finished") else f" (unfinished run: epoch {epoch} of {epochs})"
    header = (f"checkpoint {args.checkpoint}: {config.recipe} on {config.data}, eps={fmt_eps(config.eps)}, "
              f"epoch {epoch}{unfinished}")
    return Target(model, x, y, config.data, eps, describe_model(config.model, config.model_options),
                  default_out(args.checkpoint), header, config.threads if args.threads is None else args.threads,
                  {"checkpoint": os.path.abspath(args.checkpoint), "epoch": epoch, "recipe": config.recipe,
                   "train_eps": config.eps, "oblivious": args.oblivious}, attack_model)


def _load_data(args, device: torch.device):
    """(x_test, y_test, info) of --data; CLIError for bad --data-options or missing files."""
    from ..data import load_dataset

    try:
        return load_dataset(args.data, "test", args.data_dir, device, **(args.data_options or {}))
    except (TypeError, ValueError) as exc:
        if str(exc).startswith("load_dataset("):  # --data-options typed by hand
            raise CLIError(f"--data-options: {one_line(exc)}") from exc
        if isinstance(exc, TypeError):
            raise
        raise CLIError(f"--data {args.data}: {one_line(exc)}") from exc
    except FileNotFoundError as exc:
        hint = "" if args.data_dir else " (pass --data-dir)"
        raise CLIError(f"--data {args.data}: {one_line(exc)}{hint}") from exc


def from_model_spec(args, device: torch.device) -> Target:
    """The model of --model / --model-file with --weights (and --mean / --std) on --data."""
    from . import model_spec

    x, y, info = _load_data(args, device)
    num_classes = args.num_classes or info.num_classes
    if args.model:
        what, label, spec = f"--model {args.model}", args.model, args.model
        model = model_spec.build_model(args.model, info.name, info.input_shape, num_classes,
                                       args.num_classes is not None)
    else:
        path, factory = args.model_file
        what, label = f"--model-file {path}:{factory}", f"{os.path.splitext(os.path.basename(path))[0]}:{factory}"
        spec = f"file:{os.path.abspath(path)}:{factory}"
        model = model_spec.build_from_file(path, factory, num_classes)
    if args.weights:
        model_spec.load_weights(model, args.weights, what)
    architecture = type(model).__name__ + (" after Normalize(--mean, --std)" if args.mean else "")
    model = model_spec.with_normalization(model, args.mean, args.std, int(info.input_shape[0])).to(device).eval()
    model_spec.check_fits(model, x, info.num_classes, what, info.name)
    weights = os.path.abspath(args.weights) if args.weights else None
    header = (f"model {spec}: {architecture}, {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"weights {weights or 'none (as initialised)'}")
    if not weights:
        header = f"WARNING: no --weights: {what} is evaluated as initialised (random weights)\n{header}"
    metadata = {"model_spec": spec, "weights": weights,
                "weights_sha256": model_spec.file_sha256(args.weights) if args.weights else None,
                "num_classes": num_classes, "mean": args.mean, "std": args.std, "data_options": args.data_options}
    return Target(model, x, y, info.name, args.eps, label, model_spec.default_out(label), header, args.threads,
                  metadata)


def load_surrogates(args, device: torch.device, target: Target):
    """The --surrogate checkpoints' models, each trained on the target's data set."""
    surrogates = []
    for path in args.surrogate:
        surrogate, s_config, (sx, _), _ = load_model(path, device, args.data_dir)
        if s_config.data != target.data or tuple(sx.shape[1:]) != tuple(target.x.shape[1:]):
            raise CLIError(f"--surrogate {path}: trained on {s_config.data} {tuple(sx.shape[1:])}, the model on "
                           f"{target.data} {tuple(target.x.shape[1:])}; a surrogate must take the same inputs")
        surrogates.append(surrogate)
    return surrogates


def run(args) -> int:
    check_model_options(args)
    check_transfer_attacks(args.attacks, bool(args.surrogate))
    return run_on_ranks(args, "eval", evaluate_target)


def evaluate_target(args, ranks) -> None:
    """The model, data and surrogates of the options evaluated on every rank; rank 0 alone
    prints and writes the report."""
    from ..train.run_folder import writable_folder

    device = ranks.device
    target = from_checkpoint(args, device) if args.checkpoint else from_model_spec(args, device)
    surrogates = load_surrogates(args, device, target)
    out = args.out or target.out
    if ranks.is_main:
        writable_folder(out)  # before the attacks, not after
        print(target.header, file=sys.stderr)
    metadata = {**target.metadata, "surrogates": [os.path.abspath(p) for p in args.surrogate]}
    _, paths = run_evaluation(target.model, target.x, target.y, args=args, eps=target.eps, device=device,
                              model_name=target.name, data_name=f"{target.data} test", out_dir=out,
                              autocast=AMP_DTYPES[args.amp], threads=target.threads, progress=args.progress,
                              metadata=metadata, surrogates=surrogates, attack_model=target.attack_model,
                              distributed=ranks.enabled)
    if ranks.is_main:
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
