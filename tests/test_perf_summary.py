"""benchmarks.perf_summary: the README's performance tables come from the committed result
files, and benchmarks/results/summary.md is what the script prints for them today."""
import json
from pathlib import Path

from benchmarks import perf_summary

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_model_rows_take_the_worst_kernel_of_each_op_call():
    records = [
        {"kernel": "a", "sector_efficiency": 0.5, "bank_conflict_factor": 1.0},
        {"kernel": "b", "sector_efficiency": 0.9, "bank_conflict_factor": 2.5},
        {"kernel": "(op)", "case": "op x", "bytes": 300, "min_bytes": 200, "flops": 30, "min_flops": 20,
         "modeled_us": 2.0, "baseline_modeled_us": 5.0},
        {"kernel": "c", "sector_efficiency": 1.0, "bank_conflict_factor": 1.0},
        {"kernel": "(op)", "case": "op y", "bytes": 10, "min_bytes": None, "flops": 0, "min_flops": 0,
         "modeled_us": 1.0, "baseline_modeled_us": None},
    ]
    assert perf_summary.model_rows(records) == [["op x", "1.50x", "1.50x", "50 %", "2.50", "2.00", "2.50x"],
                                                ["op y", "-", "-", "100 %", "1.00", "1.00", "-"]]


def test_missing_files_are_named(tmp_path):
    text = perf_summary.model_section(tmp_path) + perf_summary.measured_section(tmp_path, "cpu")
    for suite in perf_summary.MODEL_SUITES:
        assert f"no {suite}-h100-model.json" in text


def test_committed_summary_matches_the_committed_results(capsys):
    perf_summary.main([str(RESULTS)])
    printed = capsys.readouterr().out
    assert (RESULTS / "summary.md").read_text() == printed, \
        "stale: python -m benchmarks.perf_summary > benchmarks/results/summary.md"
    for suite in perf_summary.MODEL_SUITES:
        if (RESULTS / f"{suite}-h100-model.json").exists():
            cases = [r["case"] for r in json.loads((RESULTS / f"{suite}-h100-model.json").read_text())["records"]]
            assert cases[0] in printed
