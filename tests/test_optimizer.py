"""The training optimizers (SGD, Adam) and the recipe defaults that pick them (HGD: Adam at lr
0.01, x0.1 at 60 % and 90 % of the epochs, as its official code)."""
import pytest
import torch

from fastrobust.train.checkpoint import CheckpointError
from fastrobust.train.config import ConfigError, TrainConfig
from fastrobust.train.resume_rules import check_resume
from fastrobust.train.schedule import build_optimizer


def test_build_optimizer_makes_sgd_and_adam():
    p = [torch.nn.Parameter(torch.zeros(3))]
    sgd = build_optimizer(p, 0.1, momentum=0.8, weight_decay=1e-4, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    adam = build_optimizer(p, 0.01, momentum=0.5, weight_decay=0.0, name="adam")
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.5, 0.999)
    with pytest.raises(ValueError, match="nesterov"):
        build_optimizer(p, 0.01, nesterov=True, name="adam")
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build_optimizer(p, 0.01, name="rmsprop")


def test_adam_step_matches_torch_adam():
    """One trainer-built Adam step equals torch.optim.Adam's with the same betas."""
    torch.manual_seed(0)
    w0 = torch.randn(5)
    grad = torch.randn(5)
    ours, ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    for param, opt in ((ours, build_optimizer([ours], 0.01, momentum=0.9, weight_decay=0.0, name="adam")),
                       (ref, torch.optim.Adam([ref], lr=0.01))):
        param.grad = grad.clone()
        opt.step()
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, w0)


def test_hgd_defaults_are_the_official_adam_schedule():
    cfg = TrainConfig(recipe="hgd", data="digits", epochs=10).resolved()
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.schedule) == ("adam", 0.01, 0.0, "piecewise")
    assert cfg.milestones == (6.0, 9.0) and cfg.lr_gamma == 0.1


def test_explicit_options_beat_the_recipe_defaults():
    cfg = TrainConfig(recipe="hgd", data="digits", epochs=10, optimizer="sgd", lr=0.05, milestones=(3,)).resolved()
    assert (cfg.optimizer, cfg.lr, cfg.milestones) == ("sgd", 0.05, (3.0,))
    assert TrainConfig(recipe="pgd", data="digits").resolved().optimizer == "sgd"
    assert TrainConfig(recipe="pgd", data="cifar10", epochs=20).resolved().milestones == (10.0, 15.0)


@pytest.mark.parametrize("options, message", [(dict(optimizer="rmsprop"), "optimizer must be one of"),
                                              (dict(optimizer="adam", nesterov=True), "nesterov is an option")])
def test_bad_optimizer_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options).validate()


def test_runs_saved_before_the_option_resume_as_sgd():
    cfg = TrainConfig(recipe="pgd", data="digits", epochs=2).resolved()
    old = {k: v for k, v in cfg.fingerprint().items() if k != "optimizer"}
    check_resume("old.pt", old, cfg, done=1, stopped_early=None, recipe_scales_with_epochs=False)
    with pytest.raises(CheckpointError, match="optimizer: checkpoint 'sgd' vs now 'adam'"):
        check_resume("old.pt", old, cfg.replace(optimizer="adam"), done=1, stopped_early=None,
                     recipe_scales_with_epochs=False)
