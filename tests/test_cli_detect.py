"""`fastrobust detect CHECKPOINT` end to end on digits (small budgets) and its option errors."""
import json

import pytest

from fastrobust.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def checkpoint(survey_checkpoint):
    return survey_checkpoint


def test_detect_writes_the_report(checkpoint, tmp_path, capsys):
    out = tmp_path / "detect"
    assert main(["detect", str(checkpoint), "--detectors", "fs,kd_bu,magnet", "--attacks", "fgsm,pgd", "--n", "40",
                 "--max-fit", "200", "--adaptive-n", "8", "--adaptive-steps", "5",
                 "--detector-options", '{"magnet": {"epochs": 3}, "kd_bu": {"passes": 4}}', "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["detectors"]) == ["fs", "kd_bu", "magnet"] and list(report["attacks"]) == ["fgsm", "pgd"]
    assert report["n_fit"] == 200 and report["metadata"]["eps"] == "32/256"
    for entry in report["detectors"].values():
        assert entry["adaptive"]["n_attacked"] == 8
        for row in entry["attacks"].values():
            assert 0 <= row["success_vs_detector"] <= row["attack_success"] <= 1
    md = (out / "report.md").read_text()
    assert "## DR / FPR (%)" in md and "| magnet |" in md and "survey's MNIST numbers" in md
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "report.csv").read_text().count("\n") == 1 + 3 * 2
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--detectors", "kd,fs"], "unknown detector 'kd'"),
    (["--attacks", "zoo"], "unknown attack 'zoo'"),
    (["--detector-options", '{"nic": {}}', "--detectors", "fs"], "--detector-options: nic is not among"),
    (["--detector-options", '{"fs": {"squeezers": ["blur"]}}', "--detectors", "fs"], "--detector-options fs: squeezers"),
    (["--eps-256", "300"], "--eps-256 must be in"),
])
def test_detect_option_errors_name_the_option(checkpoint, argv, message, capsys):
    try:
        status = main(["detect", str(checkpoint), *argv])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2 and message in capsys.readouterr().err
