"""benchmarks/seed_digits.py (the TisODE and J-SIGR digits tables) end to end in its --quick
mode: every training run, evaluation, table and the saliency figure are produced."""
import json

import pytest

from benchmarks import seed_digits

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


def test_quick_run_writes_the_tables(tmp_path):
    out = tmp_path / "out"
    assert seed_digits.main(["--quick", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    res = json.loads((out / "seed-digits-quick.json").read_text())
    assert set(res["tisode"]) == {"none", "vanilla", "tisode", "tisode-dopri5"}
    row = res["tisode"]["tisode-dopri5"]
    assert row["noise"]["noise"][0]["sigma"] == pytest.approx(100 / 255)
    names = {c["name"] for c in row["cascade@0.1"]["checks"]}
    assert names == {"zero_gradients", "transfer"}  # the quick run's masking checks and the transfer from the CNN
    for key in ("fgsm@0.3", "pgd20@0.2", "tisode-fgsm@0.3", "tisode-pgd@0.2", "transfer-from-cnn@0.1"):
        assert 0 <= row[key]["robust_accuracy"] <= row[key]["clean_accuracy"] <= 1
    sweep = res["jsigr"]["sweep"]
    assert sweep["chosen"] in sweep["rows"][1:]
    assert {"standard", "J-SIGR-style"} <= set(res["jsigr"])
    assert (out / "seed-digits-saliency.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "seed-digits-quick.md").read_text()
    assert "| tisode-dopri5 |" in md and "| J-SIGR-style |" in md and "Chosen: lambda_j" in md
