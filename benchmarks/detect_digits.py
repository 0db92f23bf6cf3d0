"""The digits table of the detection survey: the survey's MNIST CNN trained by `fastrobust
train`, then `fastrobust detect` with its defaults (all eight detectors; FGSM, PGD-L-inf, CW
and Square at 32/256; the combined adaptive attack on 100 test images), the numbers as
measured.

    python -m benchmarks.detect_digits                # about 10 minutes on 2 CPU cores
    python -m benchmarks.detect_digits --quick        # a smoke run (tiny budgets; numbers meaningless)

Writes <out>/detect-digits.json (the report and the commands), detect-digits.md (its tables,
the survey's MNIST numbers beside them) and detect-digits-roc.png.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from typing import Optional, Sequence

from benchmarks.seed_digits import parse_args
from fastrobust.cli import main as cli_main

MODEL = ["--model", "survey_cnn_mnist", "--activation", "relu", "--denoise", "none"]
QUICK = ["--detectors", "fs,kd_bu", "--attacks", "fgsm", "--eps-256", "64", "--n", "40", "--max-fit", "200", "--adaptive-n", "8",
         "--adaptive-steps", "5", "--detector-options", '{"kd_bu": {"passes": 4}}']


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, r, res = parse_args("detect_digits", __doc__, argv)
    checkpoint = r.train("survey-cnn", [*MODEL, "--recipe", "standard"])
    folder = r.runs / "detect"
    command = ["detect", str(checkpoint), "--out", str(folder), *(QUICK if r.quick else [])]
    r.commands.append("fastrobust " + " ".join(command))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli_main(command)
    if code != 0:
        raise SystemExit(f"fastrobust {' '.join(command)} failed:\n{buffer.getvalue()}")
    stem = "detect-digits-quick" if r.quick else "detect-digits"
    report = json.loads((folder / "report.json").read_text())
    res.update(report=report, commands=r.commands)
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    md = (folder / "report.md").read_text().replace(f"checkpoint: {checkpoint}, ", "")
    header = (f"Measured by `python -m benchmarks.detect_digits` at commit {res['commit']} on {res['machine']}; "
              f"the classifier trained {res['epochs']} epochs.\n\n")
    (args.out / f"{stem}.md").write_text(md.replace("\n\n", "\n\n" + header, 1)
                                         + f"\n![ROC]({stem}-roc.png)\n")
    shutil.copyfile(folder / "roc.png", args.out / f"{stem}-roc.png")
    print((args.out / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
