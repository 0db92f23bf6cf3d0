"""The digits table of HGD: a denoiser per guide for one standard-trained classifier, each
evaluated three ways, the numbers as measured.

    python -m benchmarks.hgd_digits                  # about 10 minutes on 2 CPU cores
    python -m benchmarks.hgd_digits --quick          # a smoke run (tiny budgets; numbers meaningless)

Writes <out>/hgd-digits.json (every evaluation report, the commands) and hgd-digits.md.

Rows: the undefended classifier (CNN, relu), and Denoised(DUNet.small, classifier) trained
by `fastrobust train --recipe hgd --target` with its defaults (the official Adam schedule)
and each guide (feature, logits, pixel, class); and the logits guide with its training
attacks crafted on an ensemble (recipe option others: the target and a standard-trained
SmallCNN-64 with Sparta, as the official ensemble attacks).
Columns (eps = 16/255, the paper's largest): clean; oblivious (the paper's threat model: FGSM
and PGD-20 crafted on the undefended classifier, the denoised model judging); transfer
(MI-FGSM from a standard-trained net of another architecture, the ode_net CNN); end-to-end
(the white-box cascade through denoiser and classifier, with the gradient-masking checks):
HGD was broken this way (Athalye and Carlini 2018).
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence

from benchmarks.seed_digits import CNN, SURROGATES, Runner, _pct, load, parse_args

EPS = 16 / 255
GUIDES = ("feature", "logits", "pixel", "class")


def table(r: Runner) -> Dict[str, Any]:
    target = r.train("hgd-target", [*CNN, "--recipe", "standard"])
    surrogate, _ = load(r.train("hgd-surrogate", [*SURROGATES["ode_net CNN"], "--recipe", "standard"]))
    classifier, data = load(target)
    other = r.train("hgd-other", [*SURROGATES["SmallCNN-64 Sparta"], "--recipe", "standard"])
    models = {"undefended": classifier}
    runs = {f"HGD-{guide}": {"guide": guide} for guide in GUIDES}
    runs["HGD-logits, ensemble attacks"] = {"guide": "logits", "others": [str(other)]}
    for name, options in runs.items():
        options = {**options, **({"width": 4} if r.quick else {})}
        folder = name.lower().replace(", ensemble attacks", "-ensemble")
        models[name] = load(r.train(folder, ["--recipe", "hgd", "--target", str(target),
                                             "--recipe-options", json.dumps(options)]))[0]
    rows: Dict[str, Any] = {}
    for name, model in models.items():
        attack_on = classifier if name != "undefended" else None
        rows[name] = {
            "clean": r.evaluate(model, data, [], EPS, tag=f"{name}/clean"),
            "oblivious": r.evaluate(model, data, ["fgsm", "pgd20"], EPS, attack_model=attack_on, cascade=False,
                                    tag=f"{name}/oblivious"),
            "transfer": r.evaluate(model, data, ["transfer"], EPS, surrogate=surrogate, tag=f"{name}/transfer"),
            "end-to-end": r.evaluate(model, data, r.cascade, EPS, checks=r.checks, tag=f"{name}/end-to-end"),
        }
    return rows


def markdown(res: Dict[str, Any]) -> str:
    lines = ["# HGD on digits (8x8, 359 test images)", "",
             f"Measured by `python -m benchmarks.hgd_digits` at commit {res['commit']} on {res['machine']}; "
             f"{res['epochs']} epochs per model; eps = 16/255. Accuracies in %. Oblivious: crafted on the undefended "
             "classifier (FGSM, PGD-20; each alone and both); transfer: MI-FGSM from a standard ode_net CNN; "
             f"end-to-end: the cascade {', '.join(res['cascade'])} through denoiser and classifier.", "",
             "| model | clean | oblivious FGSM | oblivious PGD-20 | oblivious both | transfer | end-to-end | "
             "masking checks fired |", "|---|" + "---:|" * 6 + "---|"]
    for name, row in res["rows"].items():
        obl = {a["name"]: a["accuracy_alone"] for a in row["oblivious"]["attacks"]}
        fired = [c["name"] for c in row["end-to-end"]["checks"] if c["passed"] is False]
        lines.append(f"| {name} | {_pct(row['clean']['clean_accuracy'])} | {_pct(obl.get('fgsm'))} | "
                     f"{_pct(obl.get('pgd20'))} | {_pct(row['oblivious']['robust_accuracy'])} | "
                     f"{_pct(row['transfer']['robust_accuracy'])} | {_pct(row['end-to-end']['robust_accuracy'])} | "
                     f"{', '.join(fired) or 'none'} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, r, res = parse_args("hgd_digits", __doc__, argv)
    res["rows"] = table(r)
    return r.write(res, args.out, "hgd-digits", markdown)


if __name__ == "__main__":
    raise SystemExit(main())
