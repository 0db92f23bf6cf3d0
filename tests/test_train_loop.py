"""The training loop of fastrobust.train on sklearn digits (CPU): PGD-AT beats standard training
in PGD-20 accuracy, the run's files, schedules, config errors, the overfitting guard, the PGD
recipe's modes, evaluate_pgd, and bf16 autocast with channels_last."""
import json
import os

import pytest
import torch
from torch import nn

from fastrobust.data import TensorLoader, load_digits
from fastrobust.models import SmallCNN
from fastrobust.train import (ConfigError, StepContext, TrainConfig, Trainer, create_recipe, evaluate_pgd,
                              load_checkpoint, read_metrics, train)
from fastrobust.train.schedule import OneCycle, Piecewise, build_optimizer, build_scheduler

EPS = 0.15  # the digits default (pixel scale, images in [0, 1])
QUIET = dict(progress=False, eval_samples=128, eval_steps=5)


@pytest.fixture(scope="module")
def standard_and_pgd(tmp_path_factory):
    """A small budget: SmallCNN width 16, 5 epochs of batches of 64; PGD-AT with PGD-5 (about
    10 s for both: digits runs on one CPU thread by default)."""
    tmp = tmp_path_factory.mktemp("loop")
    common = dict(data="digits", model_options={"width": 16}, epochs=5, batch_size=64, eps=EPS, **QUIET)
    standard = train(recipe="standard", out=str(tmp / "standard"), **common)
    pgd = train(recipe="pgd", steps=5, alpha=EPS / 2.5, out=str(tmp / "pgd"), **common)
    return standard, pgd


def test_pgd_at_beats_standard_in_pgd20_accuracy(standard_and_pgd):
    standard, pgd = standard_and_pgd
    s, p = standard.metrics, pgd.metrics
    assert "PGD-20" in p["final_eval"]
    assert s["final_test_clean_acc"] > 0.85 and p["final_test_clean_acc"] > 0.8
    assert p["final_test_pgd_acc"] > s["final_test_pgd_acc"] + 0.2, (s, p)


def test_run_files(standard_and_pgd):
    _, pgd = standard_and_pgd
    lines = read_metrics(pgd.metrics_path)
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5] and lines == pgd.history[:len(lines)]
    for key in ("train_loss", "train_clean_acc", "train_adv_acc", "images_per_s", "lr", "test_clean_acc",
                "test_pgd_acc"):
        assert isinstance(lines[-1][key], float), key
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert pgd.plot_path and os.path.getsize(pgd.plot_path) > 1000
    with open(os.path.join(pgd.out_dir, "results.json")) as f:
        assert json.load(f)["final_test_pgd_acc"] == pgd.metrics["final_test_pgd_acc"]
    with open(os.path.join(pgd.out_dir, "config.json")) as f:
        assert json.load(f)["recipe"] == "pgd"
    best = load_checkpoint(pgd.best_checkpoint)
    assert best["trainer"]["best_metric"] == "test_pgd_acc"
    assert best["trainer"]["best_value"] == max(r["test_pgd_acc"] for r in lines)
    assert pgd.checkpoint.endswith("last.pt") and pgd.finished and pgd.stopped_early is None


def test_digits_defaults_resolve():
    cfg = TrainConfig().resolved()
    assert (cfg.data, cfg.recipe, cfg.model, cfg.eps) == ("digits", "pgd", "small_cnn", EPS)
    assert cfg.schedule in ("onecycle", "piecewise") and cfg.epochs >= 1 and cfg.out == "runs/digits-pgd"
    cifar = TrainConfig(data="cifar10", recipe="pgd").resolved()
    assert (cifar.model, cifar.eps, cifar.lr, cifar.schedule, cifar.milestones) == (
        "preact_resnet18", 8 / 255, 0.1, "piecewise", (100.0, 150.0))
    assert cfg.threads == 1 and cifar.threads == 0
    assert not cfg.guard_enabled and TrainConfig(recipe="fgsm").guard_enabled
    assert not TrainConfig(recipe="fgsm", overfit_guard=False).guard_enabled


@pytest.mark.parametrize("options, match", [
    (dict(bogus=1), "unknown training options"),
    (dict(recipe="nope"), "unknown recipe 'nope'"),
    (dict(schedule="cosine"), "schedule must be one of"),
    (dict(epochs=0), "epochs must be an integer >= 1"),
    (dict(amp="fp8"), "amp must be one of"),
    (dict(data="mnist"), "unknown data set"),
    (dict(milestones=(5, 2)), "milestones must be increasing"),
])
def test_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(options).resolved()


def test_recipe_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="recipe 'standard' has no option 'steps'"):
        Trainer(recipe="standard", steps=3, out=str(tmp_path), **QUIET)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        Trainer(recipe="pgd", recipe_options={"steps": 0}, out=str(tmp_path), **QUIET)
    with pytest.raises(ValueError, match="unknown model 'resnet999'"):
        Trainer(model="resnet999", out=str(tmp_path), **QUIET)


def test_schedules():
    piecewise = Piecewise([2, 3], 0.1, steps_per_epoch=10)
    assert [piecewise(s) for s in (0, 19, 20, 29, 30, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    one = OneCycle(100, peak=0.5)
    assert [one(s) for s in (0, 25, 50, 75, 100)] == pytest.approx([0, 0.5, 1, 0.5, 0])
    model = nn.Linear(2, 2)
    opt = build_optimizer(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    sched = build_scheduler(opt, "onecycle", epochs=2, steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and max(lrs) == pytest.approx(0.2) and lrs.index(max(lrs)) == 5


def test_overfit_guard_stops_and_restores_best(tmp_path, monkeypatch):
    """Guard accuracies 0.5, 0.6, 0.3: epoch 3 falls 30 points below epoch 2 -> stop, restore epoch 2."""
    values = iter([0.5, 0.6, 0.3, 0.9])
    monkeypatch.setattr(Trainer, "_guard_accuracy", lambda self: next(values))
    snapshots = {}
    original = Trainer._end_of_epoch

    def spy(self, record):
        snapshots[record["epoch"]] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return original(self, record)

    monkeypatch.setattr(Trainer, "_end_of_epoch", spy)
    result = train(recipe="standard", overfit_guard=True, model_options={"width": 8}, epochs=5,
                   max_steps_per_epoch=2, eval_every=0, final_eval=False, plot=False, out=str(tmp_path), **QUIET)
    assert result.stopped_early == 3 and result.finished
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert "catastrophic overfitting" in result.history[-1]["overfit_guard"]
    assert result.checkpoint.endswith("best.pt")
    best = load_checkpoint(result.checkpoint)
    assert best["epoch"] == 2
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, snapshots[2][k]) and torch.equal(v, best["model"][k]), k
    assert load_checkpoint(os.path.join(result.out_dir, "last.pt"))["finished"]


class ModeRecorder(nn.Module):
    """SmallCNN that records whether each forward ran in train mode."""

    def __init__(self):
        super().__init__()
        self.net = SmallCNN(1, 10, width=4)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.net(x)


def test_pgd_recipe_attacks_in_eval_mode_and_trains_in_train_mode():
    x, y = load_digits("train")
    model = ModeRecorder().train()
    recipe = create_recipe("pgd", eps=EPS, steps=4)
    assert (recipe.alpha, recipe.steps, recipe.random_start) == (EPS / 4, 4, True)
    ctx = StepContext(epoch=0, epochs=1, step=0, steps_per_epoch=1, generator=torch.Generator().manual_seed(0))
    out = recipe.batch_loss(model, x[:32], y[:32], ctx)
    assert model.modes == [False] * 4 + [True] and model.training
    assert out.loss.requires_grad and out.logits is None and out.adv_logits.shape == (32, 10)
    again = recipe.batch_loss(model, x[:32], y[:32],
                              StepContext(0, 1, 0, 1, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(out.adv_logits, again.adv_logits)  # all randomness from the generator


def test_evaluate_pgd():
    x, y = load_digits("test")
    x, y = x[:120], y[:120]
    torch.manual_seed(0)
    model = SmallCNN(1, 10, width=4)
    model.train()
    zero = evaluate_pgd(model, x, y, eps=0.0)
    assert zero["clean_acc"] == zero["pgd_acc"] and zero["n"] == 120
    a = evaluate_pgd(model, x, y, eps=EPS, steps=3, batch_size=50, seed=3)
    b = evaluate_pgd(model, TensorLoader(x, y, 50, shuffle=False), eps=EPS, steps=3, seed=3)
    assert a == b and a["pgd_acc"] <= a["clean_acc"] and model.training
    with pytest.raises(ValueError, match="labels"):
        evaluate_pgd(model, x, eps=EPS)


def test_bf16_autocast_and_channels_last_run(tmp_path):
    result = train(recipe="pgd", amp="bf16", channels_last=True, model_options={"width": 8}, epochs=1,
                   max_steps_per_epoch=2, steps=2, final_eval=False, plot=False, out=str(tmp_path), **QUIET)
    record = result.history[-1]
    assert torch.isfinite(torch.tensor(record["train_loss"])) and 0 <= record["test_pgd_acc"] <= 1
