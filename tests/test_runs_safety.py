"""Runs are never lost (fastrobust.train.run_folder, resume_rules): a new run into a folder that
holds one is refused with nothing written unless it is continued (resume) or moved aside
(overwrite); metrics.jsonl is only appended to; a finished run is extended by resuming with
more epochs exactly where a straight run of that length would have trained the same epochs,
and refused with an error naming what may change everywhere else."""
import json
import os

import pytest
import torch

from fastrobust.train import CheckpointError, ConfigError, TrainConfig, Trainer, load_checkpoint, read_metrics, train
from fastrobust.train.resume_rules import same_learning_rates
from fastrobust.train.run_folder import RUN_FILES, RunFolderError

# SmallCNN (width 8) on digits, epochs of 2 batches of 64 with PGD-2: well under a second each.
BASE = dict(data="digits", recipe="pgd", model_options={"width": 8}, epochs=1, batch_size=64,
            max_steps_per_epoch=2, steps=2, eval_samples=64, eval_steps=2, final_eval=False, plot=False,
            progress=False, schedule="piecewise", milestones=(1,))
TIMING_KEYS = ("images_per_s", "epoch_time_s", "train_time_s")


def _config(out, **changes):
    return TrainConfig(**{**BASE, "out": str(out), **changes})


def _snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = open(path, "rb").read()
    return files


def _strip(history):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch run (piecewise, milestone at epoch 1) and a straight 2-epoch run."""
    tmp = tmp_path_factory.mktemp("runs")
    one = train(_config(tmp / "one"))
    two = train(_config(tmp / "two", epochs=2))
    return tmp, one, two


def test_a_new_run_into_a_run_folder_is_refused_and_writes_nothing(finished, tmp_path):
    tmp, one, _ = finished
    before = _snapshot(one.out_dir)
    with pytest.raises(RunFolderError) as info:
        Trainer(_config(one.out_dir))
    message = str(info.value)
    assert message.startswith(f"{one.out_dir}: holds a run (config.json, last.pt, best.pt, metrics.jsonl)")
    assert "resume" in message and "overwrite" in message and "\n" not in message
    assert _snapshot(one.out_dir) == before


@pytest.mark.parametrize("name", RUN_FILES)
def test_any_run_file_marks_a_run_folder(tmp_path, name):
    (tmp_path / name).write_text("x")
    with pytest.raises(RunFolderError, match=name):
        Trainer(_config(tmp_path))
    assert os.listdir(tmp_path) == [name]


def test_a_folder_without_run_files_takes_a_new_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = train(_config(tmp_path))
    assert result.finished and (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_moves_the_old_run_aside(tmp_path, capsys):
    out = tmp_path / "run"
    train(_config(out, seed=1))
    before = _snapshot(out)
    trainer = Trainer(_config(out, overwrite=True))
    moved = trainer.moved_aside
    assert moved is not None and os.path.basename(moved).startswith("run.old-")
    assert f"moved it to {moved}" in capsys.readouterr().err
    assert _snapshot(moved) == before  # the old run, whole, never deleted
    assert not any(os.path.exists(out / name) for name in RUN_FILES)
    trainer.fit()
    trainer.close()
    assert load_checkpoint(str(out / "last.pt"))["config"]["seed"] == 0
    # a second overwrite in the same second gets its own name
    again = Trainer(_config(out, overwrite=True))
    again.close()
    assert again.moved_aside != moved and os.path.isdir(again.moved_aside) and os.path.isdir(moved)


def test_overwrite_and_resume_conflict():
    with pytest.raises(ConfigError, match="give one of them"):
        TrainConfig(overwrite=True, resume=True).validate()


def test_resume_from_a_checkpoint_elsewhere_into_a_run_folder_is_refused(finished, tmp_path):
    tmp, one, two = finished
    before = _snapshot(two.out_dir)
    with pytest.raises(RunFolderError, match="holds a run"):
        Trainer(_config(two.out_dir, resume=one.checkpoint))
    with pytest.raises(RunFolderError, match="not the last checkpoint of the run"):
        Trainer(_config(two.out_dir, epochs=2, resume=os.path.join(two.out_dir, "best.pt")))
    assert _snapshot(two.out_dir) == before


def test_a_fork_into_a_new_folder_starts_with_the_runs_records(finished, tmp_path):
    _, one, two = finished
    fork = train(_config(tmp_path / "fork", epochs=2, resume=one.checkpoint))
    _same_state(fork.model.state_dict(), two.model.state_dict())
    assert _strip(read_metrics(fork.metrics_path)) == _strip(two.history)
    assert len(open(one.metrics_path).read().splitlines()) == 1  # the source run is untouched


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_extending_a_finished_run_equals_a_straight_run(finished, tmp_path):
    """1 epoch, finished; resumed with epochs=2 == 2 epochs straight, bit for bit (the schedule
    is piecewise with its milestone given, so nothing trained depends on the total)."""
    _, one, two = finished
    out = tmp_path / "extended"
    train(_config(out))
    extended = Trainer(_config(out, epochs=2, resume=True))
    assert not extended.finished and extended.epoch == 1
    result = extended.fit()
    extended.close()
    assert result.finished and len(result.history) == 2
    _same_state(result.model.state_dict(), two.model.state_dict())
    a, b = load_checkpoint(str(out / "last.pt")), load_checkpoint(two.checkpoint)
    assert a["step"] == b["step"] == 4 and a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    assert _strip(result.history) == _strip(two.history)
    assert json.loads((out / "config.json").read_text())["epochs"] == 2


def test_resume_appends_to_metrics_and_keeps_the_last_record_of_an_epoch(tmp_path):
    """A run killed after writing epoch 2's line but before its checkpoint: the resumed run
    re-runs epoch 2 and appends it; nothing written before is truncated."""
    out = tmp_path / "run"
    first = Trainer(_config(out, epochs=2))
    first.fit(stop_after=1)
    first.close()
    stale = json.dumps({"epoch": 2, "step": 4, "train_loss": 123.0, "note": "written before the crash"})
    with open(out / "metrics.jsonl", "a") as f:
        f.write(stale + "\n" + '{"epoch": 3, "cut by the cra')  # and a line cut mid-write
    result = train(_config(out, epochs=2, resume=True))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert lines[1] == stale and len(lines) == 4  # epoch 1, the stale epoch 2, the cut line, the re-run epoch 2
    assert [r["epoch"] for r in result.history] == [1, 2] and result.history[1]["train_loss"] != 123.0
    assert read_metrics(str(out / "metrics.jsonl"))[1] == result.history[1]


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """Finished 1-epoch runs whose epochs may not change."""
    tmp = tmp_path_factory.mktemp("refused")
    runs = {
        "onecycle": _config(tmp / "onecycle", schedule="onecycle", milestones=None),
        "default_milestones": _config(tmp / "default_milestones", epochs=2, milestones=None),
        "fat": _config(tmp / "fat", recipe="fat", schedule="constant", milestones=None),
        "lower": _config(tmp / "lower", epochs=2, schedule="constant", milestones=None),
    }
    for config in runs.values():
        train(config)
    return runs


@pytest.mark.parametrize("name, changes, expected", [
    ("onecycle", dict(epochs=2), "epochs=2 instead of the run's 1: the onecycle schedule rises and falls"),
    ("default_milestones", dict(epochs=4), "milestones [2, 3] instead of the run's [1, 1.5] change the learning "
                                           "rate of epochs already trained"),
    ("fat", dict(epochs=2), "recipe 'fat' scales its schedule with the total epochs"),
    ("lower", dict(epochs=1), "epochs=1 is below the 2 epochs the run has done"),
    ("lower", dict(epochs=3, lr=0.5), "made for another configuration: lr: checkpoint 0.05 vs now 0.5"),
])
def test_resume_changes_that_would_rewrite_trained_epochs_are_refused(refused, name, changes, expected):
    config = refused[name]
    before = _snapshot(config.out)
    with pytest.raises(CheckpointError) as info:
        Trainer(config.replace(resume=True, **changes))
    message = str(info.value)
    assert message.startswith(f"checkpoint {config.out}/last.pt: ") and expected in message, message
    if "below" not in expected:
        assert "on resume only these options may differ from the run's: epochs" in message
    assert _snapshot(config.out) == before


def test_a_run_with_default_milestones_extends_when_they_are_given(refused, tmp_path):
    """The default milestones of a 2-epoch piecewise run are (1, 1.5); resumed with 4 epochs
    and those milestones given, it continues."""
    config = refused["default_milestones"]
    out = tmp_path / "copy"
    os.makedirs(out)
    trainer = Trainer(config.replace(out=str(out), epochs=4, milestones=(1, 1.5),
                                     resume=os.path.join(config.out, "last.pt")))
    assert trainer.epoch == 2 and not trainer.finished
    trainer.close()


def test_same_learning_rates():
    assert same_learning_rates([5, 7.5], [5, 7.5], 10)
    assert same_learning_rates([100, 150], [150, 225], 50)  # none reached yet: free to move
    assert not same_learning_rates([5, 7.5], [10, 15], 10)
    assert same_learning_rates([5, 7.5], [5, 10], 8)  # 7.5 takes effect in epoch 8 (0-based), not trained yet
    assert not same_learning_rates([5, 7.5], [5, 10], 9)
