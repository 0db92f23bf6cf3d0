"""Checkpoints of fastrobust.train: a resumed run continues bit for bit on the CPU (2 epochs
straight == 1 + resume + 1), writes are atomic, and unusable checkpoints (missing, truncated,
foreign, newer format, another model or configuration) raise one clear CheckpointError."""
import os

import pytest
import torch

from fastrobust.models import SmallCNN
from fastrobust.train import CheckpointError, TrainConfig, Trainer, load_checkpoint, save_checkpoint, train
from fastrobust.train import checkpoint as ckpt

# SmallCNN (width 8) on digits, 2 epochs of 3 batches of 64 with PGD-3: about a second an epoch.
BASE = dict(data="digits", recipe="pgd", model_options={"width": 8}, epochs=2, batch_size=64,
            max_steps_per_epoch=3, steps=3, eval_samples=64, eval_steps=3, final_eval=False, plot=False,
            progress=False, schedule="piecewise", milestones=(1,))
TIMING_KEYS = ("images_per_s", "epoch_time_s", "train_time_s")


def _config(tmp_path, name, **changes):
    return TrainConfig(**{**BASE, "out": str(tmp_path / name), **changes})


def _strip(history):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight_and_resumed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    straight = train(_config(tmp, "straight"))
    first = Trainer(_config(tmp, "resumed"))
    part = first.fit(stop_after=1)
    first_state = load_checkpoint(os.path.join(part.out_dir, "last.pt"))
    torch.manual_seed(1234)  # whatever the caller's RNG, the resumed run restores its own
    second = Trainer(_config(tmp, "resumed", resume=True))
    resumed = second.fit()
    return tmp, straight, part, first_state, second, resumed


def test_resume_continues_bit_for_bit(straight_and_resumed):
    _, straight, part, first_state, second, resumed = straight_and_resumed
    assert not part.finished and first_state["epoch"] == 1 and not first_state["finished"]
    assert second.resumed_from is not None and resumed.finished
    _assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    a = load_checkpoint(straight.checkpoint)
    b = load_checkpoint(resumed.checkpoint)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 6
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert torch.equal(a["rng"][0]["gen:recipe"], b["rng"][0]["gen:recipe"])
    # the metrics of both epochs, identical apart from timings; one line per epoch
    assert len(straight.history) == len(resumed.history) == 2
    assert _strip(straight.history) == _strip(resumed.history)


def test_resume_of_a_finished_run_trains_no_more(straight_and_resumed):
    tmp, straight, *_ = straight_and_resumed
    again = Trainer(_config(tmp, "straight", resume=True))
    before = {k: v.clone() for k, v in again.model.state_dict().items()}
    result = again.fit()
    assert result.finished and len(result.history) == 2
    _assert_same_state(before, result.model.state_dict())


def test_checkpoint_contents(straight_and_resumed):
    _, straight, *_ = straight_and_resumed
    state = torch.load(straight.checkpoint, weights_only=True)  # plain containers only
    assert state["format"] == ckpt.FORMAT and state["version"] == ckpt.FORMAT_VERSION
    assert {"model", "optimizer", "scheduler", "recipe", "rng", "config", "epoch", "step"} <= set(state)
    assert state["config"]["recipe"] == "pgd" and state["world_size"] == 1
    assert os.path.exists(straight.best_checkpoint)
    assert not [f for f in os.listdir(straight.out_dir) if f.startswith(".tmp")]


def test_resume_with_another_configuration_is_refused(straight_and_resumed):
    tmp, *_ = straight_and_resumed
    with pytest.raises(CheckpointError, match=r"last\.pt: made for another configuration: lr"):
        Trainer(_config(tmp, "straight", resume=True, lr=0.5))


def test_resume_with_another_model_is_refused(straight_and_resumed):
    tmp, *_ = straight_and_resumed
    other = _config(tmp, "module", model=SmallCNN(1, 10, width=8), epochs=1)
    train(other)
    with pytest.raises(CheckpointError, match=r"made for another model \(SmallCNN\).*shape mismatch"):
        Trainer(other.replace(model=SmallCNN(1, 10, width=4), resume=True))


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"last\.pt: no such file"):
        Trainer(_config(tmp_path, "none", resume=True))


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "foreign-dict", "pickled-object", "newer"])
def test_unusable_checkpoints_give_one_clear_error(tmp_path, kind):
    path = str(tmp_path / "x.pt")
    if kind in ("truncated", "newer"):
        save_checkpoint(path, {"epoch": 1, "step": 1, "model": {"w": torch.ones(300)}, "optimizer": {},
                               "scheduler": {}, "rng": [], "config": {}})
        if kind == "truncated":
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
        else:
            state = torch.load(path, weights_only=True)
            state["version"] = ckpt.FORMAT_VERSION + 1
            torch.save(state, path)
    elif kind == "text":
        open(path, "w").write("not a checkpoint\n")
    elif kind == "empty":
        open(path, "w").close()
    elif kind == "foreign-dict":
        torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    else:
        torch.save(torch.nn.Linear(2, 2), path)
    expected = {"truncated": "truncated, corrupted", "text": "truncated, corrupted", "empty": "empty",
                "foreign-dict": "not a fastrobust training checkpoint", "newer": "format version",
                "pickled-object": "not a fastrobust training checkpoint"}[kind]
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert path in message and expected in message and "\n" not in message


def test_save_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, {"epoch": 1, "step": 1, "model": {}, "optimizer": {}, "scheduler": {}, "rng": [],
                           "config": {}})

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["last.pt"]  # and no temporary file is left
