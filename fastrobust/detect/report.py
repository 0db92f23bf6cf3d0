"""The detection report as files: report.json (everything), report.csv (one row per detector
and attack), report.md (the survey-style DR/FPR table at each detector's validation threshold,
the common-FPR table of AUROC and DR, the adaptive attack next to the oblivious ones, and the
survey's published MNIST numbers for comparison) and roc.png (one panel per attack)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

# The survey's MNIST table (methods-more.md §1.4: DR on successful examples / FPR, in %; eps in
# /256), each detector at its own operating point, attacks oblivious of the detector. Our "cw"
# is PGD on the CW margin, not ART's CW-L-inf method: its row is for orientation only.
SURVEY_MNIST: Dict[str, Dict[str, str]] = {
    "fgsm": {"kd_bu": "85.5/3.5", "lid": "81.7/1.4", "nss": "100/0", "fs": "97.8/5.3", "magnet": "100/0.2",
             "dnr": "59.3/10.0", "sfad": "97.8/10.8", "nic": "100/10.1"},
    "bim": {"kd_bu": "58.7/3.8", "lid": "80.1/0.9", "nss": "100/0", "fs": "99.2/5.3", "magnet": "100/0.2",
            "dnr": "67.2/10.0", "sfad": "93.8/10.8", "nic": "99.5/10.1"},
    "pgd": {"kd_bu": "55.3/4.0", "lid": "79.0/1.0", "nss": "100/0", "fs": "99.2/5.3", "magnet": "100/0.2",
            "dnr": "67.1/10.0", "sfad": "93.5/10.8", "nic": "100/10.1"},
    "cw": {"kd_bu": "42.8/0.7", "lid": "64.4/3.9", "nss": "2.5/0", "fs": "98.4/5.3", "magnet": "40.6/0.2",
           "dnr": "58.0/10.0", "sfad": "98.2/10.8", "nic": "100/10.1"},
    "deepfool": {"kd_bu": "49.0/0.4", "lid": "93.3/0.1", "nss": "98.5/0", "fs": "67.0/5.3", "magnet": "97.0/0.2",
                 "dnr": "95.6/10.0", "sfad": "99.6/10.8", "nic": "100/10.1"},
    "square": {"kd_bu": "53.5/0.2", "lid": "42.8/0.0", "nss": "87.6/0", "fs": "99.96/5.3", "magnet": "99.9/0.2",
               "dnr": "81.3/10.0", "sfad": "98.9/10.8", "nic": "99.7/10.1"},
}


def _pct(v: Optional[float], digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def markdown(report: Dict[str, Any]) -> str:
    attacks = list(report["attacks"])
    detectors = report["detectors"]
    fpr = report["fpr_target"]
    meta = report.get("metadata", {})
    lines = ["# Adversarial-example detection", ""]
    if meta:
        lines += [", ".join(f"{k}: {v}" for k, v in meta.items()), ""]
    lines += [f"Images: {report['n_fit']} to fit the detectors, {report['n_val']} for the thresholds (validation, "
              f"from the training split), {report['n_test']} correctly classified test images attacked. Each "
              f"threshold flags {_pct(fpr)} % of the validation images. DR: detection rate on the successful "
              "adversarial examples; FPR: on all clean test images; AUROC: successful examples against their "
              "clean images; success vs detector: attacked images misclassified and not flagged.", "",
              "Attack success on the classifier alone: "
              + ", ".join(f"{a} {_pct(report['attacks'][a]['success'])} %" for a in attacks), "",
              f"## DR / FPR (%) at the {_pct(fpr)} %-FPR validation threshold", "",
              "| detector | " + " | ".join(attacks) + " |", "|---|" + "---:|" * len(attacks)]
    for name, entry in detectors.items():
        cells = [f"{_pct(entry['attacks'][a]['detection_rate'])}/{_pct(entry['attacks'][a]['fpr'])}" for a in attacks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## AUROC (%)", "", "| detector | " + " | ".join(attacks) + " |", "|---|" + "---:|" * len(attacks)]
    for name, entry in detectors.items():
        lines.append(f"| {name} | " + " | ".join(_pct(entry["attacks"][a]["auroc"]) for a in attacks) + " |")
    lines += ["", "## Attack success against classifier + detector (%)", ""]
    adaptive = any("adaptive" in e for e in detectors.values())
    header = attacks + ([f"adaptive ({report.get('adaptive_kind', '')})", "adaptive DR"] if adaptive else [])
    lines += ["| detector | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for name, entry in detectors.items():
        cells = [_pct(entry["attacks"][a]["success_vs_detector"]) for a in attacks]
        if adaptive:
            ad = entry.get("adaptive") or {}
            cells += [_pct(ad.get("success_vs_detector")), _pct(ad.get("detection_rate"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    known = [a for a in attacks if a in SURVEY_MNIST]
    if known:
        lines += ["", "## The survey's MNIST numbers (DR/FPR %, each detector at its own operating point, eps "
                  "32/256; for comparison)", "", "| detector | " + " | ".join(known) + " |",
                  "|---|" + "---:|" * len(known)]
        for name in detectors:
            lines.append(f"| {name} | " + " | ".join(SURVEY_MNIST[a].get(name, "–") for a in known) + " |")
    return "\n".join(lines) + "\n"


def csv_rows(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    for name, entry in report["detectors"].items():
        for attack, row in entry["attacks"].items():
            rows.append({"detector": name, "attack": attack, "threshold": entry["threshold"][attack],
                         **{k: row[k] for k in ("auroc", "detection_rate", "fpr", "attack_success",
                                                "success_vs_detector", "n_success", "n_attacked")}})
    return rows


def plot_roc(report: Dict[str, Any], path: Path) -> str:
    from ..eval.plots import _figure, _save

    attacks = list(report["attacks"])
    fig, axes = _figure((3.2 * len(attacks), 3.2), 1, len(attacks))
    for ax, attack in zip(axes[0], attacks):
        for name, entry in report["detectors"].items():
            roc = entry["attacks"][attack]["roc"]
            if roc:
                ax.plot(roc["fpr"], roc["tpr"], label=name)
        ax.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=0.8)  # chance
        ax.set_title(attack)
        ax.set_xlabel("FPR")
        ax.set_ylabel("TPR (successful examples)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def write_report(report: Dict[str, Any], out: Path) -> Dict[str, str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "csv": out / "report.csv", "markdown": out / "report.md",
             "roc": out / "roc.png"}
    paths["json"].write_text(json.dumps(report, indent=1))
    rows = csv_rows(report)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["markdown"].write_text(markdown(report))
    plot_roc(report, paths["roc"])
    return {k: str(v) for k, v in paths.items()}
