"""The `fastrobust` command line: train -> eval end to end on digits with tiny settings, the help
of every subcommand, and every documented error path (one line on stderr, exit status 2):
the options, corrupted checkpoints, a folder holding a run, a read-only folder, a full disk;
--debug shows the traceback instead."""
import contextlib
import csv
import errno
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from fastrobust import cli
from fastrobust.cli import main
from fastrobust.cli.errors import CLIError
from fastrobust.testing import run_cli
from fastrobust.train import CheckpointError, load_checkpoint, save_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--epochs", "1", "--subset", "128", "--batch-size", "32", "--max-steps-per-epoch", "2", "--eval-samples",
        "32", "--eval-steps", "2", "--attacks", "pgd20,apgd-ce", "--eval-n", "48", "--check-n", "24",
        "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny `fastrobust train` run (capsys is per test: output captured by hand); its report
    is read right away (a later test rewrites eval/)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["train", *TINY, "--out", str(out)])
    report = json.loads((out / "eval" / "report.json").read_text())
    return {"out": out, "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "report": report}


def test_train_writes_run_folder(trained):
    out, report = trained["out"], trained["report"]
    assert trained["code"] == 0, trained["stderr"]
    for name in ("last.pt", "best.pt", "config.json", "command.txt", "metrics.jsonl", "results.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == "digits" and config["recipe"] == "pgd" and config["model"] == "small_cnn"
    assert config["model_options"] == {"activation": "sparta", "denoise": ["layer2", "gaussian"]}
    assert config["eps"] == pytest.approx(0.15)
    assert (out / "command.txt").read_text().startswith("fastrobust train --epochs 1")
    # the evaluation report
    assert report["n"] == 48 and 0.0 <= report["robust_accuracy"] <= report["clean_accuracy"] <= 1.0
    assert [a["name"] for a in report["attacks"]] == ["pgd20", "apgd-ce"]
    assert report["metadata"]["run"] == str(out)
    assert {c["name"] for c in report["checks"]} >= {"eps_sweep", "steps", "loss_curve"}
    with open(out / "eval" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["attack"] for r in rows] == ["clean", "pgd20", "apgd-ce", "overall"]
    assert float(rows[-1]["robust_accuracy"]) == pytest.approx(report["robust_accuracy"])
    assert "| clean |" in (out / "eval" / "report.md").read_text()
    pngs = [out / "curves.png"] + [out / "eval" / f"{n}.png" for n in ("accuracy_vs_eps", "accuracy_vs_steps",
                                                                      "loss_curves")]
    for png in pngs:
        assert png.read_bytes()[:8] == PNG, png
    # the printed table: clean, each attack, robust
    table = trained["stdout"]
    for row in ("| clean |", "| pgd20 |", "| apgd-ce |", "| **robust** |"):
        assert row in table
    assert f"{100 * report['robust_accuracy']:.2f}" in table


def test_eval_rebuilds_the_checkpoint(trained, capsys):
    """eval of last.pt with the training run's evaluation settings gives its numbers (the model
    is rebuilt from the stored config: Sparta, the denoising block, the weights)."""
    out, report = trained["out"], trained["report"]
    code, stdout, err = run_cli(["eval", out / "last.pt", "--attacks", "pgd20,apgd-ce", "--n", "48", "--checks",
                                 "none", "--no-progress"], capsys)
    assert code == 0, err
    again = json.loads((out / "eval" / "report.json").read_text())  # default --out: the run's eval/
    assert again["clean_accuracy"] == report["clean_accuracy"]
    assert again["robust_accuracy"] == report["robust_accuracy"]
    assert again["metadata"]["checkpoint"] == str(out / "last.pt")
    assert "| **robust** |" in stdout
    for name in ("report.csv", "report.md"):
        assert (out / "eval" / name).is_file()


def test_train_resume_of_a_finished_run_evaluates_again(trained, capsys):
    """The same options + --resume CHECKPOINT: the stored configuration matches (the defaults are
    deterministic), nothing is trained, the evaluation runs; --out defaults to the folder."""
    out = trained["out"]
    before = (out / "last.pt").read_bytes()
    code, stdout, err = run_cli(["train", *TINY, "--checks", "none", "--resume", out / "last.pt"], capsys)
    assert code == 0, err
    assert (out / "last.pt").read_bytes() == before
    assert "| **robust** |" in stdout
    assert json.loads((out / "eval" / "report.json").read_text())["robust_accuracy"] == \
        trained["report"]["robust_accuracy"]
    assert len((out / "command.txt").read_text().splitlines()) == 2


def test_eval_best_checkpoint_and_options(trained, capsys, tmp_path):
    code, _, err = run_cli(["eval", trained["out"] / "best.pt", "--attacks", "none", "--n", "16", "--checks",
                            "none", "--eps", "8/255", "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads((trained["out"] / "eval-best" / "report.json").read_text())
    assert report["n"] == 16 and report["attacks"] == [] and report["eps"] == pytest.approx(8 / 255)
    assert report["robust_accuracy"] == report["clean_accuracy"]


def test_eval_transfer_from_a_surrogate_and_noise(trained, capsys, tmp_path):
    """--surrogate loads a checkpoint for the transfer preset (here the model itself: the transfer
    attack is then the white-box MI-FGSM); --noise adds the Gaussian-noise accuracy."""
    last = trained["out"] / "last.pt"
    code, stdout, err = run_cli(["eval", last, "--attacks", "mifgsm", "--n", "32", "--checks", "none",
                                 "--noise", "100/255,0.5", "--out", tmp_path / "white", "--no-progress"], capsys)
    assert code == 0, err
    code, stdout, err = run_cli(["eval", last, "--attacks", "transfer", "--surrogate", last, "--n", "32", "--checks",
                                 "none", "--out", tmp_path / "transfer", "--no-progress"], capsys)
    assert code == 0, err
    white = json.loads((tmp_path / "white" / "report.json").read_text())
    transfer = json.loads((tmp_path / "transfer" / "report.json").read_text())
    assert transfer["robust_accuracy"] == white["robust_accuracy"]
    assert transfer["metadata"]["surrogates"] == [str(last)]
    assert [r["sigma"] for r in white["noise"]] == [pytest.approx(100 / 255), 0.5]
    assert "## Gaussian noise" in (tmp_path / "white" / "report.md").read_text()
    code, _, err = run_cli(["eval", last, "--attacks", "transfer", "--n", "8", "--no-progress"], capsys)
    _assert_one_line_error(code, err, "eval", "--attacks transfer: crafted on a surrogate model")


@pytest.mark.parametrize("command", ["train", "eval", "info", "bench"])
def test_help_lists_every_option(command, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0
    if command == "bench":
        assert "--device" in out and "suite" in out
        return
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in out, flag
        if action.option_strings and action.dest not in ("help", "json"):
            assert action.help and "default" in action.help, action.option_strings


def test_top_level_help_lists_commands(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for command in ("train", "eval", "bench", "info"):
        assert command in out


def _corrupt_checkpoints(trained, tmp_path):
    """name -> (path, expected text) of checkpoints eval must refuse."""
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained["out"] / "last.pt").read_bytes()[:200])
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint\n")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    other_model = tmp_path / "other_model.pt"
    state = load_checkpoint(str(trained["out"] / "last.pt"))
    state["config"]["model_options"]["width"] = 8
    save_checkpoint(str(other_model), state)
    flipped = tmp_path / "flipped.pt"
    data = bytearray((trained["out"] / "last.pt").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    flipped.write_bytes(bytes(data))
    nan_weights = tmp_path / "nan_weights.pt"
    state = load_checkpoint(str(trained["out"] / "last.pt"))
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    save_checkpoint(str(nan_weights), state)
    config_list = tmp_path / "config_list.pt"
    state = load_checkpoint(str(trained["out"] / "last.pt"))
    state["config"] = list(state["config"].items())
    save_checkpoint(str(config_list), state)
    config_values = tmp_path / "config_values.pt"
    state = load_checkpoint(str(trained["out"] / "last.pt"))
    state["config"]["eps"] = "0.15"
    save_checkpoint(str(config_values), state)
    return {
        "missing": (tmp_path / "missing.pt", "no such file"),
        "truncated": (truncated, "truncated, corrupted or not a torch file"),
        "text": (text, "truncated, corrupted or not a torch file"),
        "foreign": (foreign, "not a fastrobust training checkpoint"),
        "other_model": (other_model, "made for another model"),
        "flipped": (flipped, "corrupted: content hash mismatch"),
        "nan_weights": (nan_weights, f"the model's weights are not finite (NaN or inf in [{name}])"),
        "config_list": (config_list, "entry 'config' must be a dict, got list"),
        "config_values": (config_values, "stored configuration is not readable by this fastrobust (eps must be"),
    }


def _assert_one_line_error(code, err, command, expected):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastrobust {command}: error: "), err
    assert "Traceback" not in err
    assert expected in lines[0], err


@pytest.mark.parametrize("kind", ["missing", "truncated", "text", "foreign", "other_model", "flipped",
                                  "nan_weights", "config_list", "config_values"])
def test_eval_bad_checkpoint_is_one_line(kind, trained, tmp_path, capsys):
    path, expected = _corrupt_checkpoints(trained, tmp_path)[kind]
    code, out, err = run_cli(["eval", path, "--no-progress", "--out", tmp_path / "eval"], capsys)
    _assert_one_line_error(code, err, "eval", expected)
    assert str(path) in err and "accuracy" not in out  # no number reported
    assert not (tmp_path / "eval").exists()


TRAIN_ERRORS = {
    "cifar_missing": (["--data", "cifar10", "--data-dir", "{tmp}/no-data"], "CIFAR data not found"),
    "recipe": (["--recipe", "bogus"], "argument --recipe: invalid choice: 'bogus'"),
    "model": (["--model", "bogus"], "argument --model: invalid choice"),
    "activation": (["--activation", "bogus"], "argument --activation: invalid choice"),
    "data": (["--data", "mnist"], "argument --data: invalid choice"),
    "amp": (["--amp", "fp8"], "argument --amp: invalid choice"),
    "attack": (["--attacks", "pgd20,bogus"], "unknown attack 'bogus'"),
    "checks": (["--checks", "bogus"], "unknown check 'bogus'"),
    "eps": (["--eps", "eight"], "argument --eps"),
    "epochs": (["--epochs", "0"], "argument --epochs: must be >= 1"),
    "denoise_syntax": (["--denoise", "layer2"], "argument --denoise"),
    "denoise_stage": (["--denoise", "layer9:gaussian"], "unknown stage 'layer9'"),
    "cifs": (["--cifs"], "has no CIFS variant"),
    "model_option": (["--model-options", '{"depth": 3}'], "unknown option 'depth'"),
    "model_options_json": (["--model-options", "{depth"], "argument --model-options: not JSON"),
    "recipe_option": (["--recipe-options", '{"bogus": 1}'], "bogus"),
    "recipe_steps": (["--recipe", "standard", "--steps", "3"], "recipe 'standard' has no option 'steps'"),
    "data_option": (["--data-options", '{"bogus": 1}'], "--data-options"),
    "lr": (["--lr", "-1"], "lr must be"),
    "batch_size": (["--batch-size", "100000"], "larger than the"),
    "device_name": (["--device", "tpu9"], "--device"),
    "resume_no_out": (["--resume"], "--resume without a checkpoint needs --out"),
    "resume_missing": (["--resume", "{tmp}/nothing/last.pt"], "no such file"),
    "eps_inf": (["--eps", "inf"], "argument --eps: must be a finite number >= 0, got 'inf'"),
    "eps_nan": (["--eps", "nan"], "argument --eps: must be a finite number >= 0, got 'nan'"),
    "eps_negative": (["--eps", "-0.1"], "argument --eps: must be >= 0"),
    "alpha_inf": (["--alpha", "1e999"], "argument --alpha: must be a finite number"),
    "lr_inf": (["--lr", "inf"], "lr must be a finite number >= 0.0, got inf"),
    "data_option_type": (["--data-options", '{"seed": "x"}'],
                         "--data-options: load_dataset('digits') option 'seed' must be an integer in [0, 2**63), "
                         "got 'x'"),
    "data_option_shape": (["--data", "synthetic", "--data-options", '{"shape": 3}'],
                          "option 'shape' must be a list of positive integers"),
    "model_option_type": (["--model-options", '{"width": "x"}'], "width must be a positive int, got 'x'"),
    "recipe_option_type": (["--recipe", "trades", "--recipe-options", '{"beta": "x"}'],
                           "beta must be a finite number, got 'x'"),
    "overwrite_resume": (["--overwrite", "--resume"], "give one of them"),
    "transfer_without_surrogate": (["--attacks", "pgd20,transfer"], "--attacks transfer: crafted on a surrogate"),
}


@pytest.mark.parametrize("name", sorted(TRAIN_ERRORS))
def test_train_errors_are_one_line(name, tmp_path, capsys):
    extra, expected = TRAIN_ERRORS[name]
    argv = ["train", "--out", tmp_path / "run"] if name != "resume_no_out" else ["train"]
    argv += [a.replace("{tmp}", str(tmp_path)) for a in extra]
    code, _, err = run_cli(argv, capsys)
    _assert_one_line_error(code, err, "train", expected)
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder behind


@pytest.mark.parametrize("argv, expected", [
    (["--attacks", "bogus"], "unknown attack 'bogus'"),
    (["--n", "0"], "argument --n: must be >= 1"),
    (["--eps", "1/0"], "argument --eps"),
    (["--eps", "inf"], "argument --eps: must be a finite number >= 0, got 'inf'"),
    (["--eps", "nan"], "argument --eps: must be a finite number >= 0, got 'nan'"),
    (["--eps=-8/255"], "argument --eps: must be >= 0"),
    (["--amp", "fp8"], "argument --amp: invalid choice"),
    (["--noise", "0"], "argument --noise: standard deviations must be > 0"),
    (["--noise", "x"], "argument --noise: expected a number"),
    (["--surrogate", "/nonexistent.pt"], "/nonexistent.pt"),
])
def test_eval_option_errors_are_one_line(argv, expected, trained, capsys):
    code, _, err = run_cli(["eval", trained["out"] / "last.pt", *argv], capsys)
    _assert_one_line_error(code, err, "eval", expected)


def test_eval_needs_a_checkpoint(capsys):
    code, _, err = run_cli(["eval"], capsys)
    _assert_one_line_error(code, err, "eval", "CHECKPOINT")


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_gpu_is_one_line(command, device, trained, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["train", "--out", tmp_path / "run"] if command == "train" else ["eval", trained["out"] / "last.pt"]
    code, _, err = run_cli(argv + ["--device", device], capsys)
    _assert_one_line_error(code, err, command, "CUDA is not available")


def test_console_errors_have_no_traceback(tmp_path):
    """Through a fresh interpreter, as the console script runs: one stderr line, status 2."""
    for argv, expected in ((["eval", str(tmp_path / "missing.pt")], "no such file"),
                           (["train", "--denoise", "layer9:gaussian", "--out", str(tmp_path / "r")],
                            "unknown stage")):
        proc = subprocess.run([sys.executable, "-m", "fastrobust.cli", *argv], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and expected in errors[0], proc.stderr


# -- runs are never lost; the machine's state is one line ------------------------------------

def _files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder)) if (folder / name).is_file()}


def test_train_into_a_run_folder_is_refused(trained, capsys):
    out = trained["out"]
    before = _files(out)
    code, _, err = run_cli(["train", *TINY, "--no-eval", "--out", out], capsys)
    _assert_one_line_error(code, err, "train", f"{out}: holds a run (config.json, last.pt, best.pt, metrics.jsonl)")
    assert "--resume" in err and "--overwrite" in err
    assert _files(out) == before  # not even command.txt


def test_train_overwrite_moves_the_run_aside(trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained["out"], out)
    before = _files(out)
    code, _, err = run_cli(["train", *TINY, "--no-eval", "--out", out, "--overwrite"], capsys)
    assert code == 0, err
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and f"moved it to {moved[0]}" in err
    assert _files(moved[0]) == before
    assert (out / "last.pt").is_file() and len((out / "command.txt").read_text().splitlines()) == 1


def test_train_extends_a_finished_run_with_more_epochs(tmp_path, capsys):
    """--resume --epochs 2 after a finished 1-epoch run: allowed for a piecewise run with its
    milestones; metrics.jsonl gains a line; the onecycle default is refused, naming the options
    that may change."""
    out = tmp_path / "run"
    quick = [*TINY, "--no-eval", "--out", out]
    code, _, err = run_cli(["train", *quick, "--schedule", "piecewise", "--milestones", "1"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["train", *quick, "--schedule", "piecewise", "--milestones", "1", "--epochs", "2",
                            "--resume"], capsys)
    assert code == 0, err
    assert "(resuming after epoch 1)" in err
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert load_checkpoint(str(out / "last.pt"))["epoch"] == 2
    other = tmp_path / "onecycle"
    assert run_cli(["train", *TINY, "--no-eval", "--out", other], capsys)[0] == 0
    code, _, err = run_cli(["train", *TINY, "--no-eval", "--out", other, "--epochs", "2", "--resume"], capsys)
    _assert_one_line_error(code, err, "train", "epochs=2 instead of the run's 1: the onecycle schedule")
    assert "on resume only these options may differ from the run's" in err


def test_train_help_says_what_may_change_on_resume(capsys):
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    assert "Resuming (--resume) continues a run bit for bit, so the options must be the run's except:" in out
    assert "--overwrite" in out and ".old-" in out


@pytest.mark.parametrize("case", ["train_new", "train_resume", "eval"])
def test_read_only_folders_are_one_line(case, trained, tmp_path, read_only, capsys):
    if case == "train_new":
        read_only(tmp_path)
        argv = ["train", *TINY, "--no-eval", "--out", tmp_path / "run"]
        where = tmp_path / "run"
    elif case == "train_resume":
        run = tmp_path / "run"
        shutil.copytree(trained["out"], run)
        read_only(run)
        argv = ["train", *TINY, "--checks", "none", "--resume", "--out", run]
        where = run
    else:
        read_only(trained["out"])
        argv = ["eval", trained["out"] / "last.pt", "--attacks", "none", "--checks", "none", "--no-progress"]
        where = trained["out"] / "eval"
    code, _, err = run_cli(argv, capsys)
    _assert_one_line_error(code, err, argv[0], f"{where}: Read-only file system (EROFS)")


def test_a_full_disk_is_one_line(tmp_path, full_disk, capsys):
    full_disk(room=20_000)  # config.json and metrics.jsonl fit; the first checkpoint does not
    out = tmp_path / "run"
    code, _, err = run_cli(["train", *TINY, "--no-eval", "--out", out], capsys)
    assert code == 2 and "Traceback" not in err
    started, error = err.strip().splitlines()  # the run had started: its first line, then the error
    assert started.startswith("training ")
    assert error.startswith(f"fastrobust train: error: {out / 'last.pt'}: No space left on device (ENOSPC)")
    assert "--resume" in error
    assert not [name for name in os.listdir(out) if name.endswith(".pt") or name.startswith(".tmp")]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, tmp_path, capsys):
    missing = str(tmp_path / "missing.pt")
    argv = ["--debug", "eval", missing] if where == "before" else ["eval", missing, "--debug"]
    with pytest.raises(CLIError) as info:
        main(argv)
    assert isinstance(info.value.__cause__, CheckpointError)  # what it was made from, shown too
    code, _, err = run_cli(["eval", missing], capsys)  # and without it: one line
    _assert_one_line_error(code, err, "eval", "no such file")


def test_debug_shows_os_errors(tmp_path, read_only):
    read_only(tmp_path)
    with pytest.raises(OSError) as info:
        main(["--debug", "train", *TINY, "--no-eval", "--out", str(tmp_path / "run")])
    assert info.value.errno == errno.EROFS


def test_python_m_cli_from_another_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastrobust.cli", "--debug", "eval", str(tmp_path / "x.pt")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "no such file" in proc.stderr


def test_python_m_fastrobust_train_errors_are_one_line(tmp_path):
    """`python -m fastrobust.train` (the torchrun entry point) answers the machine's state and
    the user's options in one line with exit 2, as the `fastrobust` command does."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for argv, expect in ((["--out", str(blocker / "run")], "(ENOTDIR)"),
                         (["--out", str(tmp_path / "run"), "--eps", "-1"], "eps")):
        proc = subprocess.run([sys.executable, "-m", "fastrobust.train", "--data", "digits", "--epochs", "1", *argv],
                              capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and lines[0].startswith("fastrobust.train: error: ") and expect in lines[0], lines
