"""benchmarks/ladder_digits.py (the LADDER digits table) end to end in its --quick mode."""
import json

import pytest

from benchmarks import ladder_digits

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


def test_quick_run_writes_the_table(tmp_path):
    out = tmp_path / "out"
    assert ladder_digits.main(["--quick", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    res = json.loads((out / "ladder-digits-quick.json").read_text())
    assert list(res["rows"]) == ["standard", "PGD-AT"] + [f"LADDER ({k})" for k in ladder_digits.LADDER]
    for name, row in res["rows"].items():
        wb = row["white-box"]
        assert 0 <= wb["robust_accuracy"] <= wb["clean_accuracy"] <= 1
        assert ("generated" in row) == name.startswith("LADDER")
    gen = res["rows"]["LADDER (raw w, eta 5)"]["generated"]
    assert 0 <= gen["label_fidelity"] <= 1 and 0 <= gen["fools_target"] <= 1
    assert (out / "ladder-digits-quick-tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert "| LADDER (normalised w, eta 2) |" in (out / "ladder-digits-quick.md").read_text()
    flip = res["rows"]["LADDER (raw w, smallest flipping eta 0.5-25)"]["generated"]
    assert 0.5 <= flip["median_eta"] <= 25 and 0.5 <= flip["mean_eta"] <= 25
