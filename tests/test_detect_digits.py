"""benchmarks/detect_digits.py (the detection digits table) end to end in its --quick mode."""
import json

import pytest

from benchmarks import detect_digits

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning", "ignore::FutureWarning")


def test_quick_run_writes_the_table(tmp_path, capsys):
    out = tmp_path / "out"
    assert detect_digits.main(["--quick", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    res = json.loads((out / "detect-digits-quick.json").read_text())
    assert list(res["report"]["detectors"]) == ["fs", "kd_bu"] and res["quick"] is True
    assert any(c.startswith("fastrobust detect ") for c in res["commands"])
    md = (out / "detect-digits-quick.md").read_text()
    assert "Measured by `python -m benchmarks.detect_digits`" in md and "| kd_bu |" in md
    assert (out / "detect-digits-quick-roc.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
