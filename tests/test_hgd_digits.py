"""benchmarks/hgd_digits.py (the HGD digits table) end to end in its --quick mode."""
import json

import pytest

from benchmarks import hgd_digits

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


def test_quick_run_writes_the_table(tmp_path):
    out = tmp_path / "out"
    assert hgd_digits.main(["--quick", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    res = json.loads((out / "hgd-digits-quick.json").read_text())
    assert list(res["rows"]) == (["undefended"] + [f"HGD-{g}" for g in hgd_digits.GUIDES]
                                 + ["HGD-logits, ensemble attacks"])
    assert '"others"' in next(c for c in res["commands"] if "hgd-logits-ensemble" in c)
    for name, row in res["rows"].items():
        assert set(row) == {"clean", "oblivious", "transfer", "end-to-end"}
        oblivious = row["oblivious"]
        assert [a["name"] for a in oblivious["attacks"]] == ["fgsm", "pgd20"]
        # the denoised models are attacked through their classifier alone, and judged whole
        assert oblivious["metadata"]["attack_model"] == (None if name == "undefended" else "SmallCNN")
        assert row["end-to-end"]["metadata"]["model_class"].endswith("SmallCNN" if name == "undefended" else "Denoised")
    md = (out / "hgd-digits-quick.md").read_text()
    assert "| HGD-feature |" in md and "| undefended |" in md
