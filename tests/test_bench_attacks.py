"""The attacks suite (fastrobust/bench/attacks.py): a quick CPU run end to end. The official
AutoAttack code and torchattacks are baselines where importable, recorded as skipped (with
the reason) where not."""
import json
import math

import pytest

from fastrobust.cli import main as cli_main

from fastrobust.bench import attacks as bench_attacks  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_attacks")
    rc = cli_main(["bench", "attacks", "--device", "cpu", "--quick", "--out", str(out), "--quiet"])
    return rc, json.loads((out / "attacks-cpu-quick.json").read_text())


def test_quick_run_times_and_checks_every_attack(quick_run):
    rc, result = quick_run
    assert rc == 0 and result["suite"] == "attacks"
    assert [(c["model"], c["attack"]) for c in result["cases"]] == [
        ("digits", a) for a in ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "autoattack-standard")]
    for case in result["cases"]:
        ours = case["implementations"]["fastrobust"]
        assert 0 <= ours["robust_accuracy"] <= 100 and math.isfinite(ours["median_s"]) and ours["median_s"] > 0
        for name in ("official", "torchattacks"):
            entry = case["implementations"][name]
            assert ("skipped" in entry and "not" in entry["skipped"]) or "median_s" in entry, (case["attack"], name)
            if "median_s" in entry:
                assert case["speedup_of_fastrobust"][name] == pytest.approx(entry["median_s"] / ours["median_s"])
    square = next(c for c in result["cases"] if c["attack"] == "square")
    assert square["queries"] == 100 and square["steps"] == 10


def test_robust_accuracy_checks_the_ball_and_the_box(digits_model, digits_test_set):
    x, y = digits_test_set[0][:8], digits_test_set[1][:8]
    with pytest.raises(AssertionError, match="eps-ball"):
        bench_attacks.robust_accuracy(digits_model, (x + 0.2).clamp(0, 1), x, y, 0.1)
    assert bench_attacks.robust_accuracy(digits_model, x, x, y, 0.1) > 50
