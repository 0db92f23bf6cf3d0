"""Checkpoints verify themselves: a content hash is stored and checked on load (a flipped byte
in a tensor is an error, not another number), format-1 files without a hash still load, a
malformed entry is a clear error, a full disk is the OSError of the failed write, and
non-finite weights are neither saved by the trainer nor continued from."""
import errno
import os

import pytest
import torch
from torch import nn

from fastrobust.models import SmallCNN
from fastrobust.train import CheckpointError, TrainConfig, Trainer, load_checkpoint, save_checkpoint
from fastrobust.train import checkpoint as ckpt
from fastrobust.train.content_hash import content_sha256

# the tiny digits run of tests/test_train_resume.py
BASE = dict(data="digits", recipe="pgd", model_options={"width": 8}, epochs=1, batch_size=64,
            max_steps_per_epoch=2, steps=2, eval_samples=64, eval_steps=2, final_eval=False, plot=False,
            progress=False, schedule="constant")
MARKER = torch.arange(4096, dtype=torch.float32) * 1.5 + 7  # values whose bytes occur once in the file


def _state(**changes):
    state = {"epoch": 1, "step": 3, "model": {"w": MARKER.clone(), "b": torch.zeros(3)}, "optimizer": {"state": {}},
             "scheduler": {"last_epoch": 3}, "rng": [{"torch": torch.zeros(4, dtype=torch.uint8)}],
             "config": {"recipe": "pgd"}, "finished": True}
    state.update(changes)
    return state


def _flip(path, offset: int, n: int = 64) -> None:
    data = bytearray(open(path, "rb").read())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_a_flipped_byte_in_a_tensor_is_a_content_hash_mismatch(tmp_path):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, _state())
    assert torch.equal(load_checkpoint(path)["model"]["w"], MARKER)
    offset = open(path, "rb").read().index(MARKER.numpy().tobytes()[:64])  # inside the tensor's data
    _flip(path, offset + 1000)
    torch.load(path, weights_only=True)  # torch reads it without a word: only the hash tells
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path}: corrupted: content hash mismatch") and "\n" not in message


def test_the_hash_covers_values_types_and_names():
    base = _state()
    digest = content_sha256(base)
    assert content_sha256(_state()) == digest  # deterministic
    changed = [
        _state(model={"w": MARKER.clone().index_fill_(0, torch.tensor([4095]), 0.0), "b": torch.zeros(3)}),
        _state(model={"w": MARKER.double(), "b": torch.zeros(3)}),           # same values, another dtype
        _state(model={"w": MARKER.view(64, 64), "b": torch.zeros(3)}),       # same bytes, another shape
        _state(model={"weight": MARKER.clone(), "b": torch.zeros(3)}),       # another name
        _state(epoch=1.0),                                                   # a float, not an int
        _state(rng=({"torch": torch.zeros(4, dtype=torch.uint8)},)),         # a tuple, not a list
    ]
    for i, state in enumerate(changed):
        assert content_sha256(state) != digest, i


def test_format_1_without_a_hash_still_loads(tmp_path):
    path = str(tmp_path / "old.pt")
    torch.save({"format": ckpt.FORMAT, "version": 1, **_state()}, path)  # as fastrobust wrote it before
    state = load_checkpoint(path)
    assert state["version"] == 1 and torch.equal(state["model"]["w"], MARKER)


def test_a_hashed_format_without_its_hash_is_refused(tmp_path):
    path = str(tmp_path / "x.pt")
    torch.save({"format": ckpt.FORMAT, "version": ckpt.FORMAT_VERSION, **_state()}, path)
    with pytest.raises(CheckpointError, match=r"x\.pt: corrupted: no content hash"):
        load_checkpoint(path)


@pytest.mark.parametrize("key, value, expected", [
    ("config", ["recipe", "pgd"], "entry 'config' must be a dict, got list"),
    ("epoch", "1", "entry 'epoch' must be a int, got str"),
    ("model", {"w": [1.0, 2.0]}, "entry 'model' must map parameter names to tensors"),
    ("fingerprint", "lr=0.1", "entry 'fingerprint' must be a dict"),
])
def test_malformed_entries_are_named(tmp_path, key, value, expected):
    path = str(tmp_path / "x.pt")
    save_checkpoint(path, _state(**{key: value}))  # a consistent hash: only the entry is wrong
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert path in str(info.value) and expected in str(info.value)


def test_a_full_disk_raises_the_write_error_and_keeps_the_old_file(tmp_path, full_disk):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, _state(epoch=1))
    full_disk(room=4096)  # torch.save fails inside its zip writer
    with pytest.raises(OSError) as info:
        save_checkpoint(path, _state(epoch=2))
    assert info.value.errno == errno.ENOSPC and info.value.filename == path
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left


def test_nonfinite_entries_names_them():
    state = {"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")]), "c": torch.tensor([float("-inf")]),
             "steps": torch.tensor(3), "empty": torch.zeros(0)}
    assert ckpt.nonfinite_entries(state) == ["b", "c"]
    with pytest.raises(CheckpointError, match=r"x\.pt: the model's weights are not finite \(NaN or inf in \[b, c\]\)"):
        ckpt.check_finite_weights("x.pt", state)


class NaNGradient(nn.Module):
    """The wrapped model's logits plus sqrt(s - s) = 0: a finite loss whose gradient in s is
    NaN (sqrt'(0) * 0), so one optimizer step makes s NaN."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.s = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.inner(x) + torch.sqrt(self.s - self.s)


def test_the_trainer_never_saves_nonfinite_weights(tmp_path):
    """One step: its loss (computed before it) is finite, the weights after it are not; the
    epoch is refused and nothing is saved (the loss check alone lets it through)."""
    trainer = Trainer(TrainConfig(**{**BASE, "max_steps_per_epoch": 1, "out": str(tmp_path / "run")}),
                      model=NaNGradient(SmallCNN(1, 10, width=8)))
    with pytest.raises(FloatingPointError, match=r"weights are not finite after epoch 1 \(NaN or inf in s\); "
                                                 r"nothing was saved"):
        trainer.fit()
    trainer.close()
    assert not os.path.exists(tmp_path / "run" / "last.pt")


def test_the_trainer_does_not_continue_from_nonfinite_weights(tmp_path):
    config = TrainConfig(**{**BASE, "epochs": 2, "out": str(tmp_path / "run")})
    first = Trainer(config)
    first.fit(stop_after=1)
    first.close()
    path = str(tmp_path / "run" / "last.pt")
    state = load_checkpoint(path)
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match=rf"last\.pt: the model's weights are not finite .*{name}"):
        Trainer(config.replace(resume=True))
