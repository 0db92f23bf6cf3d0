"""The training benchmark suite (fastrobust/bench/train.py): a quick CPU run end to end, and its checks."""
import csv
import importlib.util
import json
import math

import pytest
import torch

from fastrobust.cli import main as cli_main

from fastrobust.bench import train as bench_train, train_report  # noqa: E402

KINDS = {"standard": 0, "fgsm-rs": 1, "pgd-10": 10}
CASE_FIELDS = {"case", "kind", "recipe", "model", "batch", "image_shape", "device", "dtype", "channels_last", "eps",
               "alpha", "attack_steps", "fwd_bwd_per_step", "epoch_images", "steps_per_epoch", "data_images",
               "check_steps", "warmup_steps", "implementations", "ratios", "speedup_of_fused"}
TIMED_FIELDS = {"what", "precision", "channels_last", "correct", "check_losses", "step_time_s", "iqr_s",
                "step_times_s", "rounds", "steps_per_round", "images_per_s", "seconds_per_epoch"}


def positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_train")
    rc = cli_main(["bench", "train", "--device", "cpu", "--quick", "--out", str(out), "--quiet"])
    return rc, out, json.loads((out / "train-cpu-quick.json").read_text())


def timed_cases(result):
    return [c for c in result["cases"] if not c.get("skipped")]


def test_quick_run_passes_and_writes_its_files(quick_run):
    rc, out, result = quick_run
    assert rc == 0
    assert result["complete"] and result["suite"] == "train"
    with open(out / "train-cpu-quick.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(result["cases"])
    assert set(rows[0]) == set(train_report.CSV_COLUMNS)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "train-cpu-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = result["metadata"]
    assert meta["epoch_images"] == 50_000 and "ceil" in meta["extrapolation"]
    assert meta["timed_steps"] >= 1 and meta["rounds"] >= 1


def test_case_list(quick_run):
    _, _, result = quick_run
    cases = {(c["model"], c["kind"]): c for c in result["cases"]}
    assert set(cases) == {(m, k) for m in ("PreActResNet18", "WRN-34-10") for k in KINDS}
    for (model, kind), c in cases.items():
        assert c["attack_steps"] == KINDS[kind] and c["fwd_bwd_per_step"] == KINDS[kind] + 1
        if model == "WRN-34-10":  # CUDA only, recorded with the reason
            assert "CUDA only" in c["skipped"]
            assert all(e["skipped"] == c["skipped"] for e in c["implementations"].values())


def test_records_have_the_documented_fields_and_positive_ratios(quick_run):
    _, _, result = quick_run
    assert timed_cases(result)
    for c in timed_cases(result):
        assert CASE_FIELDS <= set(c), c["case"]
        assert c["steps_per_epoch"] == math.ceil(50_000 / c["batch"])
        assert set(c["implementations"]) == {"fastrobust", "eager", "floor"}
        for name, e in c["implementations"].items():
            where = (c["case"], name)
            assert "error" not in e and e["correct"], (where, e)
            assert TIMED_FIELDS <= set(e), where
            assert all(positive_finite(t) for t in e["step_times_s"]), where
            assert positive_finite(e["step_time_s"]) and positive_finite(e["images_per_s"]), where
            assert e["seconds_per_epoch"] == pytest.approx(e["step_time_s"] * c["steps_per_epoch"]), where
        assert c["implementations"]["eager"]["precision"] == "fp32"
        assert c["implementations"]["floor"]["checked"] is False
        for ratio in ("eager_over_fastrobust", "fastrobust_over_floor", "eager_over_floor"):
            assert positive_finite(c["ratios"][ratio]), (c["case"], ratio)
        assert set(c["speedup_of_fused"]) == {"eager", "floor"}


def test_training_checks_hold(quick_run):
    """Finite, decreasing losses on one batch; the adversarial batch within eps of x."""
    _, _, result = quick_run
    for c in timed_cases(result):
        for name in ("fastrobust", "eager"):
            e = c["implementations"][name]
            assert e["loss_decreased"] and all(math.isfinite(v) for v in e["check_losses"]), (c["case"], name)
            assert e["linf_distance"] <= c["eps"] + bench_train.BALL_SLACK, (c["case"], name)
            if c["kind"] == "standard":
                assert e["linf_distance"] == 0.0
            else:  # the attack moved the batch
                assert e["linf_distance"] > 0.5 * c["eps"], (c["case"], name)


def test_summary_and_targets(quick_run):
    _, _, result = quick_run
    fgsm = result["summary"]["fgsm_rs_15_epochs_s"]
    (key, projections), = fgsm.items()
    assert key.startswith("PreActResNet18")
    assert positive_finite(projections["fastrobust"])
    spe = result["summary"]["seconds_per_epoch"][key]["fgsm-rs"]["fastrobust"]
    assert projections["fastrobust"] == pytest.approx(15 * spe)
    metrics = {t["metric"] for t in result["targets"]}
    assert metrics == {"eager_over_fastrobust", "fastrobust_over_floor", "fastrobust_15_epochs_s"}
    for t in result["targets"]:
        assert t["on_target_device"] is False  # a CPU smoke run: informative only
        assert positive_finite(t["value"]) and isinstance(t["met"], bool)


def test_check_rejects_points_outside_the_ball_and_bad_losses():
    x = torch.rand(4, 3, 8, 8)
    eps = bench_train.EPS
    inside = (x + eps * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
    ok = bench_train.check_training([2.3, 1.0], inside, x, eps)
    assert ok["correct"] and ok["loss_decreased"] and ok["linf_distance"] <= eps
    outside = bench_train.check_training([2.3, 1.0], (x + 2 * eps).clamp(0, 1), x, eps)
    assert not outside["correct"] and "eps-ball" in outside["problems"][0]
    assert not bench_train.check_training([2.3, 1.0], x + 2, x, eps)["correct"]  # leaves [0, 1]
    assert not bench_train.check_training([2.3, 1.0], x[:2], x, eps)["correct"]
    assert not bench_train.check_training([2.3, 1.0], None, x, eps)["correct"]
    assert not bench_train.check_training([2.3, 2.4], x, x, eps)["correct"]  # no decrease
    assert not bench_train.check_training([2.3, float("nan")], x, x, eps)["correct"]


def test_cases_and_extrapolation():
    full_cpu = bench_train.make_cases("cpu")
    assert {(c.model, c.batch, c.image_shape, c.skip is None) for c in full_cpu} == {
        ("PreActResNet18", 16, (3, 16, 16), True), ("WRN-34-10", 16, (3, 16, 16), False)}
    assert all(c.dtype == torch.float32 and not c.channels_last for c in full_cpu)
    cuda = bench_train.make_cases("cuda")
    assert {(c.model, c.batch, c.image_shape) for c in cuda} == {("PreActResNet18", 512, (3, 32, 32)),
                                                                  ("WRN-34-10", 128, (3, 32, 32))}
    assert all(c.dtype == torch.bfloat16 and c.channels_last and c.skip is None for c in cuda)
    assert bench_train.steps_per_epoch(512) == 98 and bench_train.steps_per_epoch(128) == 391
    with pytest.raises(SystemExit):
        bench_train.make_cases("cpu", [torch.float64])
