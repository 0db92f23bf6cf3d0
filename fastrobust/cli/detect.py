"""`fastrobust detect CHECKPOINT`: the detection survey's evaluation of a trained classifier
(fastrobust.detect.protocol), written as a report."""
from __future__ import annotations

import argparse
import os
import sys

from .common import HelpFormatter, cpu_threads, json_object, nonnegative_int, positive_int
from .errors import CLIError, one_line
from .ranks import run_on_ranks

DESCRIPTION = """\
Adversarial-example detection for a `fastrobust train` checkpoint, by the protocol of the
detection survey (Aldahdooh et al.) with its leaks removed.

Only correctly classified images are used. The detectors are fitted on the training split
(KD+BU and LID once per attack, on its successful examples; NSS once, on PGD examples at the
survey's mixed radii; the others on clean images), their thresholds set at --fpr on a held-out
validation part of the training split, and they are scored on the attacked test split: DR on
the successful adversarial examples, FPR, AUROC, and the attacks' success against classifier +
detector. With --adaptive, a detector-aware attack runs against each detector on the first
--adaptive-n test images. report.json, report.csv, report.md and roc.png go to --out.
"""

EPILOG = """\
detectors: kd_bu, lid, nss, fs, magnet, dnr, sfad, nic (default: all)
attacks:   fgsm, bim, pgd, cw (PGD on the CW margin), deepfool, square (default: fgsm,pgd,cw,square)

examples:
  fastrobust train --model survey_cnn_mnist --recipe standard --out runs/survey
  fastrobust detect runs/survey/last.pt
  fastrobust detect runs/survey/last.pt --detectors fs,magnet --attacks pgd --eps-256 64 --adaptive combined
  fastrobust detect runs/survey/last.pt --detector-options '{"magnet": {"epochs": 400}}'
"""


def _names(kind: str, choices):
    def parse(text: str):
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {kind} {', '.join(map(repr, bad)) or repr(text)}; choose "
                                             f"from {', '.join(choices)} (comma-separated)")
        return names
    return parse


def _json_dict(text: str):
    value = json_object(text)
    if not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError("expected a JSON object of {detector: {option: value}}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def add_parser(sub) -> None:
    from ..detect import DETECTORS
    from ..detect.survey_attacks import DEFAULT_ATTACKS, SURVEY_ATTACKS

    p = sub.add_parser("detect", help="adversarial-example detectors for a checkpoint (the survey's protocol)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by fastrobust train")
    g = p.add_argument_group("detection")
    g.add_argument("--detectors", type=_names("detector", list(DETECTORS)), default=tuple(DETECTORS),
                   metavar="LIST", help="comma-separated detectors (default: all eight)")
    g.add_argument("--attacks", type=_names("attack", SURVEY_ATTACKS), default=DEFAULT_ATTACKS, metavar="LIST",
                   help=f"comma-separated attacks (default: {','.join(DEFAULT_ATTACKS)})")
    g.add_argument("--eps-256", type=float, default=32.0, metavar="E",
                   help="L-inf radius in the survey's /256 units (default: 32, i.e. 0.125)")
    g.add_argument("--fpr", type=_fraction, default=0.05, metavar="F",
                   help="false-positive rate of the thresholds on the validation images (default: 0.05)")
    g.add_argument("--detector-options", type=_json_dict, default={}, metavar="JSON",
                   help='constructor options per detector, e.g. \'{"magnet": {"epochs": 400}}\' (default: none)')
    g.add_argument("--max-fit", type=positive_int, default=1000, metavar="N",
                   help="at most N training images to fit on (default: 1000)")
    g.add_argument("--val-fraction", type=_fraction, default=0.2, metavar="F",
                   help="share of the training images held out for the thresholds (default: 0.2)")
    g.add_argument("--n", type=positive_int, metavar="N", help="attack the first N test images (default: all)")
    g.add_argument("--points", dest="n", type=positive_int, metavar="N",
                   help="--n under torchrun, whose parser takes --n for an abbreviation of its own options")
    g.add_argument("--adaptive", choices=("none", "combined", "extra_class", "logit_matching"), default="combined",
                   help="detector-aware attack against each detector (default: combined)")
    g.add_argument("--adaptive-n", type=positive_int, default=100, metavar="N",
                   help="test images the adaptive attack runs on (default: 100)")
    g.add_argument("--adaptive-steps", type=positive_int, default=100, metavar="K",
                   help="steps (or queries, without gradients) of the adaptive attack (default: 100)")
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help="report folder (default: CHECKPOINT's folder/detect)")
    g.add_argument("--data-dir", metavar="DIR", help="CIFAR folder (default: the checkpoint's)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    g.add_argument("--seed", type=nonnegative_int, default=0, metavar="S", help="default: 0")
    g.add_argument("--threads", type=nonnegative_int, metavar="N",
                   help="CPU threads, 0: torch's default (default: the checkpoint's run setting)")
    g.add_argument("--distributed", action="store_true",
                   help="under torchrun: the ranks share the attacks and the detectors, whole jobs each, and "
                        "report the numbers of a single process; only rank 0 writes and prints the report; "
                        "`torchrun --nproc_per_node K -m fastrobust.detect ...` implies it (default: off)")
    p.set_defaults(func=run)


def build_detectors(names, options):
    from ..detect import DETECTORS

    unknown = [k for k in options if k not in names]
    if unknown:
        raise CLIError(f"--detector-options: {', '.join(unknown)} is not among --detectors {','.join(names)}")
    detectors = {}
    for name in names:
        try:
            detectors[name] = DETECTORS[name](**options.get(name, {}))
        except (TypeError, ValueError) as exc:
            raise CLIError(f"--detector-options {name}: {one_line(exc)}") from exc
    return detectors


def run(args) -> int:
    if not 0 < args.eps_256 <= 256:
        raise CLIError(f"--eps-256 must be in (0, 256], got {args.eps_256:g}")
    build_detectors(args.detectors, args.detector_options)  # its errors before any rank joins
    return run_on_ranks(args, "detect", detect)


def detect(args, ranks) -> None:
    """The survey's evaluation of the checkpoint on every rank; rank 0 alone writes and prints."""
    from ..data import load_dataset
    from ..detect import adaptive_attack
    from ..detect.protocol import detection_split, evaluate_detectors
    from ..detect.report import write_report
    from ..detect.survey_attacks import attacks_for
    from ..train.run_folder import writable_folder
    from .eval import load_model

    device = ranks.device
    detectors = build_detectors(args.detectors, args.detector_options)
    model, config, (x_test, y_test), _ = load_model(args.checkpoint, device, args.data_dir)
    model.requires_grad_(False)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "detect")
    if ranks.is_main:
        writable_folder(out)  # before the attacks, not after
    x_train, y_train, _ = load_dataset(config.data, "train", args.data_dir or config.data_dir, device,
                                       **config.data_options)
    if args.n is not None:
        x_test, y_test = x_test[:args.n], y_test[:args.n]
    eps = args.eps_256 / 256
    threads = config.threads if args.threads is None else args.threads

    def adaptive(m, det, x, y):
        return adaptive_attack(m, det, x, y, eps, kind=args.adaptive, steps=args.adaptive_steps, seed=args.seed)[1]
    with cpu_threads(device, threads):
        data = detection_split(model, x_train, y_train, x_test, y_test, val_fraction=args.val_fraction,
                               seed=args.seed, max_fit=args.max_fit)
        report = _evaluate(evaluate_detectors, model, detectors, attacks_for(model, args.attacks, eps, args.seed),
                           data, fpr=args.fpr, seed=args.seed,
                           adaptive=None if args.adaptive == "none" else adaptive, adaptive_n=args.adaptive_n,
                           distributed=ranks.enabled, progress=_progress(ranks))
    if not ranks.is_main:
        return
    report["adaptive_kind"] = args.adaptive
    report["metadata"] = {"checkpoint": os.path.abspath(args.checkpoint), "model": config.model,
                          "data": config.data, "eps": f"{args.eps_256:g}/256", "seed": args.seed}
    paths = write_report(report, out)
    with open(paths["markdown"]) as f:
        print(f.read())
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))


def _progress(ranks):
    """Each rank notes its own jobs on stderr, tagged with its rank when there are several."""
    tag = f"[rank {ranks.rank}] " if ranks.enabled else ""
    return lambda message: print(tag + message, file=sys.stderr)


def _evaluate(evaluate_detectors, *args, **kwargs):
    """evaluate_detectors; a detector that cannot be fitted on this model's data (a supervised
    one with no successful training examples, a class too small to split) is a CLI error."""
    try:
        return evaluate_detectors(*args, **kwargs)
    except ValueError as exc:
        raise CLIError(one_line(exc)) from exc
