"""The PGD benchmark suite (fastrobust/bench/pgd.py): a quick CPU run end to end, and its check."""
import importlib.util
import json
import math

import pytest
import torch

from fastrobust.cli import main as cli_main

EXPECTED_IMPLEMENTATIONS = {
    "pgd-10": {"fastrobust", "fastrobust keep=success", "fastrobust+channels_last", "reference", "torchattacks", "floor"},
    "step": {"fastrobust", "reference", "torchattacks_chain"},
    "restarts": {"fastrobust", "sequential"},
    "apgd-ce": {"fastrobust", "reference", "torchattacks"},
}


def available(module: str, name: str = None) -> bool:
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
    return found and (name is None or hasattr(importlib.import_module(module), name))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_pgd")
    rc = cli_main(["bench", "pgd", "--device", "cpu", "--quick", "--out", str(out), "--quiet"])
    return rc, out, json.loads((out / "pgd-cpu-quick.json").read_text())


def test_quick_run_passes_and_writes_every_file(quick_run):
    rc, out, result = quick_run
    assert rc == 0
    assert result["complete"] and result["suite"] == "pgd"
    assert (out / "pgd-cpu-quick.csv").read_text().count("\n") > len(result["cases"])
    assert (out / "pgd-cpu-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result["metadata"]["pgd_ops_backend"]) == {"pgd_step_", "pgd_random_init_", "pgd_update_best_",
                                                          "apgd_step_"}


def test_quick_run_has_every_implementation_checked_or_skipped(quick_run):
    _, _, result = quick_run
    assert {c["kind"] for c in result["cases"]} == set(EXPECTED_IMPLEMENTATIONS)
    for case in result["cases"]:
        impls = case["implementations"]
        assert set(impls) == EXPECTED_IMPLEMENTATIONS[case["kind"]], case["case"]
        for name, entry in impls.items():
            where = (case["case"], name)
            assert "error" not in entry, where
            if entry.get("skipped"):
                continue
            assert entry["correct"], where
            assert math.isfinite(entry["median_s"]) and entry["median_s"] > 0, where
            assert math.isfinite(entry["images_per_s"]) and entry["images_per_s"] > 0, where
            if case["kind"] != "step" and name != "floor":
                assert 0.0 <= entry["robust_accuracy"] <= 1.0, where


def test_baselines_always_run(quick_run):
    _, _, result = quick_run
    by_kind = {c["kind"]: c for c in result["cases"]}
    pgd = by_kind["pgd-10"]
    for name in ("reference", "floor"):
        assert pgd["implementations"][name].get("median_s"), name
    assert math.isfinite(pgd["overhead_over_floor_pct"]["reference"])
    step = by_kind["step"]
    assert all(e.get("median_s") for e in step["implementations"].values())
    assert set(step["speedup_of_fused"]) == {"reference", "torchattacks_chain"}


def test_available_implementations_are_not_skipped(quick_run):
    """Skipping is for what is not written or installed yet, nothing else."""
    _, _, result = quick_run
    must_run = {"fastrobust": available("fastrobust.attacks", "PGD"),
                "torchattacks": available("torchattacks")}
    pgd = next(c for c in result["cases"] if c["kind"] == "pgd-10")
    for name, runs in must_run.items():
        assert bool(pgd["implementations"][name].get("skipped")) != runs, name


def test_restart_case_fools_no_sample(quick_run):
    """eps = 0: both restart schedules do all the work (see bench_pgd's docstring)."""
    _, _, result = quick_run
    restarts = next(c for c in result["cases"] if c["kind"] == "restarts")
    assert restarts["eps"] == 0.0
    for name, entry in restarts["implementations"].items():
        if not entry.get("skipped"):
            assert entry["robust_accuracy"] == 1.0, name


def test_check_rejects_points_outside_the_ball_or_box():
    from fastrobust.bench.pgd import AttackCase, check_adversarial, make_workload

    work = make_workload(AttackCase("pgd-10", "SmallCNN", 4, torch.float32, "cpu"))
    assert check_adversarial(work, work.x.clone())["correct"]
    outside = check_adversarial(work, (work.x + 2 * work.case.eps).clamp(0, 1))
    assert not outside["correct"] and "eps-ball" in outside["problems"][0]
    assert not check_adversarial(work, work.x + 2)["correct"]
    assert not check_adversarial(work, work.x[:2])["correct"]
