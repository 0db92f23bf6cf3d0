"""The digits table of LADDER: standard training, PGD-AT and LADDER fine-tuning of the same CNN,
the numbers as measured.

    python -m benchmarks.ladder_digits               # about 10 minutes on 2 CPU cores
    python -m benchmarks.ladder_digits --quick       # a smoke run (tiny budgets; numbers meaningless)

Writes <out>/ladder-digits.json, ladder-digits.md and ladder-digits-tradeoff.png (clean vs
robust accuracy of the three).

Rows: the standard CNN (relu, no denoising; LADDER's starting point), PGD-AT of the same CNN
from scratch, and LADDER (fastrobust train --recipe ladder --target the standard CNN) at one eta
with raw w (the code's) and with w normalised (w/||w||, the paper's), and with per image the
smallest eta of the official MNIST grid (0.5 ... 25, raw w) whose image flips the classifier. Columns: clean accuracy, the white-box
cascade at eps 0.1; for LADDER the generated set's label fidelity: how many of the images
generated on the test set (from the standard CNN, as the recipe builds them) an independent
standard CNN (another seed) still gives their source label, and how many fool the standard CNN.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from benchmarks.seed_digits import CNN, Runner, _pct, load, parse_args

EPS = 0.1
FLIP_GRID = [0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0]
LADDER = {"raw w, eta 5": {"eta": 5.0}, "normalised w, eta 2": {"eta": 2.0, "normalize": True},
          "raw w, smallest flipping eta 0.5-25": {"etas": FLIP_GRID}}
FOLDERS = {"raw w, eta 5": "ladder-5-0", "normalised w, eta 2": "ladder-2-1",
           "raw w, smallest flipping eta 0.5-25": "ladder-flip-0"}


def fidelity(target, judge, data, options: Dict[str, Any], quick: bool) -> Dict[str, float]:
    """Label fidelity and fooling rate of images generated from `target` on the test set, with
    the recipe's defaults (decoder and SVMs fitted on the training split)."""
    from fastrobust.data import load_digits
    from fastrobust.ladder import (LatentDecoder, PairSVM, boundary_examples, fit_decoder, fit_pair_svm,
                                   flip_search, label_fidelity, latent_features)

    xt, yt = load_digits("train")
    g = torch.Generator().manual_seed(0)
    h = latent_features(target, xt)
    svm = PairSVM(h.shape[1], 10)
    fit_pair_svm(svm, h, yt, per_class=200, epochs=5 if quick else 200, generator=g)
    dec = LatentDecoder(h.shape[1], (1, 8, 8), 8 if quick else 64)
    fit_decoder(dec, target, xt, epochs=2 if quick else 30, generator=g)
    x, y = data
    normalize = options.get("normalize", False)
    extra = {}
    if "etas" in options:
        images, _, chosen = flip_search(target, dec, svm, x, y, options["etas"], normalize=normalize, generator=g)
        extra = {"mean_eta": chosen.mean().item(), "median_eta": chosen.median().item()}
    else:
        images, _ = boundary_examples(target, dec, svm, x, y, options["eta"], normalize=normalize, generator=g)
    return {"label_fidelity": label_fidelity(judge, images, y), "fools_target": 1 - label_fidelity(target, images, y),
            **extra}


def table(r: Runner) -> Dict[str, Any]:
    quick_ladder = {"svm_epochs": 5, "decoder_epochs": 2, "decoder_width": 8, "per_class": 20} if r.quick else {}
    standard = r.train("standard", [*CNN, "--recipe", "standard"])
    judge, _ = load(r.train("judge", [*CNN, "--recipe", "standard"], seed=1))
    paths = {"standard": standard, "PGD-AT": r.train("pgd", [*CNN, "--recipe", "pgd", "--eps", str(EPS)])}
    for name, options in LADDER.items():
        paths[f"LADDER ({name})"] = r.train(FOLDERS[name], [
            "--recipe", "ladder", "--target", str(standard), "--schedule", "constant", "--lr", "0.01",
            "--recipe-options", json.dumps({**options, **quick_ladder})])
    target, data = load(standard)
    rows: Dict[str, Any] = {}
    for name, path in paths.items():
        model, _ = load(path)
        rows[name] = {"white-box": r.evaluate(model, data, r.cascade, EPS, checks=r.checks, tag=f"{name}/white-box")}
        for label, options in LADDER.items():
            if name == f"LADDER ({label})":
                rows[name]["generated"] = fidelity(target, judge, data, options, r.quick)
    return rows


def plot(res: Dict[str, Any], path: Path) -> None:
    from fastrobust.eval.plots import _figure, _save

    fig, axes = _figure((5.0, 4.0))
    ax = axes[0][0]
    for name, row in res["rows"].items():
        wb = row["white-box"]
        ax.scatter(100 * wb["clean_accuracy"], 100 * wb["robust_accuracy"], label=name)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"robust accuracy at eps {EPS:g} (%)")
    ax.set_title("digits: clean vs robust")
    ax.legend(fontsize=7)
    _save(fig, path)


def markdown(res: Dict[str, Any]) -> str:
    lines = ["# LADDER on digits (8x8, 359 test images)", "",
             f"Measured by `python -m benchmarks.ladder_digits` at commit {res['commit']} on {res['machine']}; "
             f"{res['epochs']} epochs per run (LADDER: fine-tuning epochs from the standard CNN). Accuracies in %; "
             f"white-box: the cascade {', '.join(res['cascade'])} at eps {EPS:g}. Label fidelity: the share of "
             "images generated on the test set that an independent standard CNN still gives their source label.", "",
             "| model | clean | white-box | label fidelity | generated images fooling the standard CNN | "
             "eta of the generated test images |", "|---|---:|---:|---:|---:|---|"]
    for name, row in res["rows"].items():
        wb, gen = row["white-box"], row.get("generated", {})
        eta = (f"median {gen['median_eta']:g}, mean {gen['mean_eta']:.2f}" if "median_eta" in gen else
               next((f"{o['eta']:g}" for k, o in LADDER.items() if name == f"LADDER ({k})"), "–"))
        lines.append(f"| {name} | {_pct(wb['clean_accuracy'])} | {_pct(wb['robust_accuracy'])} | "
                     f"{_pct(gen.get('label_fidelity'))} | {_pct(gen.get('fools_target'))} | {eta} |")
    return "\n".join(lines + ["", f"![trade-off]({res['plot']})", ""])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, r, res = parse_args("ladder_digits", __doc__, argv)
    res["rows"] = table(r)
    res["plot"] = "ladder-digits-quick-tradeoff.png" if args.quick else "ladder-digits-tradeoff.png"
    plot(res, args.out / res["plot"])
    return r.write(res, args.out, "ladder-digits", markdown)


if __name__ == "__main__":
    raise SystemExit(main())
