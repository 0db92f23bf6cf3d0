"""`fastrobust eval CHECKPOINT`: the robustness evaluation of a training checkpoint.

The model is rebuilt from the configuration the checkpoint stores (fastrobust.train writes it:
model name and options, data set, recipe), its weights loaded, and it is evaluated on the test
split of the checkpoint's data set (fastrobust.eval.evaluate), the table printed and the
report written.
"""
from __future__ import annotations

import argparse
import os
import sys

from .common import AMP_CHOICES, AMP_DTYPES, HelpFormatter, check_device, eps_type, fmt_eps, nonnegative_int
from .errors import CLIError, one_line
from .evaluation import add_eval_options, check_transfer_attacks, run_evaluation

DESCRIPTION = """\
Robustness evaluation of a `fastrobust train` checkpoint (last.pt or best.pt).

The model is rebuilt from the checkpoint's stored configuration and evaluated on the test split
of its data set: clean accuracy, then the attack cascade (each attack on the images still
robust), then the gradient-masking checks. The table is printed; report.json, report.csv,
report.md and the checks' plots are written to --out (default: CHECKPOINT's folder/eval for
last.pt, CHECKPOINT's folder/eval-NAME for another checkpoint NAME.pt).

The checkpoint is verified first: a content hash mismatch (a corrupted file) or weights that
are NaN or inf stop the command with an error; no number is reported for such a model.
"""

EPILOG = """\
examples:
  fastrobust eval runs/digits-pgd-small_cnn-20250101-120000/last.pt
  fastrobust eval runs/cifar-pgd/best.pt --attacks pgd20,apgd-ce,apgd-t --n 1000 --eps 8/255 --device cuda
  fastrobust eval runs/digits-tisode/last.pt --attacks fgsm,tisode-pgd,pgd20 --eps 0.3 --noise 100/255
  fastrobust eval runs/digits-jsigr/last.pt --attacks transfer,pgd20 --surrogate runs/digits-standard/last.pt
  fastrobust eval runs/digits-hgd/last.pt --oblivious --out runs/digits-hgd/eval-oblivious
"""


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="robustness evaluation of a training checkpoint", description=DESCRIPTION,
                       epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by fastrobust train")
    g = p.add_argument_group("evaluation")
    add_eval_options(g, prefix="", default_checks="default")
    g.add_argument("--eps", type=eps_type, metavar="EPS",
                   help="L-inf radius, e.g. 0.15 or 8/255 (default: the checkpoint's training eps)")
    g.add_argument("--amp", choices=AMP_CHOICES, default="none",
                   help="autocast of the clean pass and the attacks (default: none, float32)")
    g.add_argument("--surrogate", action="append", default=[], metavar="CHECKPOINT",
                   help="a checkpoint of a surrogate model (repeat for several: their averaged logits) that the "
                        "transfer attack preset (--attacks transfer) crafts on; trained on the same data set "
                        "(default: none)")
    g.add_argument("--oblivious", action="store_true",
                   help="for a denoiser checkpoint (fastrobust train --recipe hgd): craft the attacks on its classifier "
                        "alone and judge them on the whole model (HGD's own threat model, which ignores the denoiser; "
                        "default: off, the attacks go through denoiser and classifier)")
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help="report folder (default: CHECKPOINT's folder/eval, see above)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="CIFAR folder (default: the checkpoint's, else $FASTROBUST_DATA_DIR, else ./data)")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N (default: auto)")
    g.add_argument("--threads", type=nonnegative_int, metavar="N",
                   help="CPU threads, 0: torch's default (default: the checkpoint's run setting; digits 1)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars (default: on)")
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


def run(args) -> int:
    from ..train.run_folder import writable_folder
    from .train import describe_model

    check_transfer_attacks(args.attacks, bool(args.surrogate))
    device = check_device(args.device)
    model, config, (x, y), state = load_model(args.checkpoint, device, args.data_dir)
    surrogates = []
    for path in args.surrogate:
        surrogate, s_config, (sx, _), _ = load_model(path, device, args.data_dir)
        if s_config.data != config.data or tuple(sx.shape[1:]) != tuple(x.shape[1:]):
            raise CLIError(f"--surrogate {path}: trained on {s_config.data} {tuple(sx.shape[1:])}, the model on "
                           f"{config.data} {tuple(x.shape[1:])}; a surrogate must take the same inputs")
        surrogates.append(surrogate)
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
    out = writable_folder(args.out or default_out(args.checkpoint))  # before the attacks, not after
    epoch, epochs = int(state.get("epoch", 0)), config.epochs
    unfinished = "" if state.get("finished") else f" (unfinished run: epoch {epoch} of {epochs})"
    print(f"checkpoint {args.checkpoint}: {config.recipe} on {config.data}, eps={fmt_eps(config.eps)}, "
          f"epoch {epoch}{unfinished}", file=sys.stderr)
    model_desc = describe_model(config.model, config.model_options)
    threads = config.threads if args.threads is None else args.threads
    _, paths = run_evaluation(model, x, y, args=args, eps=eps, device=device, model_name=model_desc,
                              data_name=f"{config.data} test", out_dir=out, autocast=AMP_DTYPES[args.amp],
                              threads=threads, progress=args.progress,
                              metadata={"checkpoint": os.path.abspath(args.checkpoint), "epoch": epoch,
                                        "recipe": config.recipe, "train_eps": config.eps,
                                        "surrogates": [os.path.abspath(p) for p in args.surrogate],
                                        "oblivious": args.oblivious},
                              surrogates=surrogates, attack_model=attack_model)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0
