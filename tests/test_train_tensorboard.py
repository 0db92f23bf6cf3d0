"""fastrobust train --tensorboard: the training metrics per epoch and the evaluation's numbers,
curves and plots in OUT/tensorboard, read back with tensorboard's own reader; without the
tensorboard package the option is a one-line error naming the install command."""
import pytest

from fastrobust.testing import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::DeprecationWarning")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the tensorboard package (the test extra) is not installed")

ARGS = ["train", "--epochs", "2", "--subset", "256", "--eval-every", "1", "--eval-samples", "64", "--no-progress",
        "--no-plot", "--attacks", "pgd20,apgd-ce", "--eval-n", "40", "--checks", "steps,loss_curve,eps_sweep",
        "--threads", "1"]


def test_tensorboard_holds_the_metrics_and_the_evaluation(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(ARGS + ["--tensorboard", "--out", out], capsys)
    assert code == 0, err
    assert f"tensorboard: {out / 'tensorboard'}" in stdout
    log = event_accumulator.EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    log.Reload()
    tags = log.Tags()
    assert {"train/loss", "train/clean_acc", "train/adv_acc", "train/lr", "test/pgd_acc"} <= set(tags["scalars"])
    assert [e.step for e in log.Scalars("train/loss")] == [1, 2]
    assert {"eval/clean_accuracy", "eval/robust_accuracy", "eval/accuracy_after/pgd20",
            "eval/accuracy_after/apgd-ce", "eval/accuracy_vs_steps", "eval/loss_curve"} <= set(tags["scalars"])
    import json
    report = json.loads((out / "eval" / "report.json").read_text())
    robust = log.Scalars("eval/robust_accuracy")
    assert [e.step for e in robust] == [2] and robust[0].value == pytest.approx(report["robust_accuracy"])
    steps = next(c for c in report["checks"] if c["name"] == "steps")["data"]
    assert [e.step for e in log.Scalars("eval/accuracy_vs_steps")] == steps["steps"]
    assert {"eval/accuracy_vs_eps", "eval/accuracy_vs_steps", "eval/loss_curves"} <= set(tags["images"])


def test_without_the_package_tensorboard_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    from fastrobust import tensorboard

    monkeypatch.setattr(tensorboard, "available", lambda: False)
    code, stdout, err = run_cli(ARGS + ["--tensorboard", "--out", tmp_path / "run"], capsys)
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and "tensorboard: the tensorboard package is not installed" in err, err
    assert "fastrobust[tensorboard]" in err and not (tmp_path / "run").exists()
