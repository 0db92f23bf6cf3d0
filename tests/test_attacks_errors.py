"""Bad arguments give a ValueError that names the argument."""
import pytest
import torch
from torch import nn

from fastrobust import attacks

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")

MODEL = nn.Sequential(nn.Flatten(), nn.Linear(4, 5))
X = torch.rand(3, 1, 2, 2)
Y = torch.tensor([0, 1, 2])


@pytest.mark.parametrize("make, match", [
    (lambda: attacks.PGD(MODEL, eps=-0.1), "eps"),
    (lambda: attacks.PGD(MODEL, eps=float("nan")), "eps"),
    (lambda: attacks.PGD(MODEL, eps=torch.tensor([0.1, -0.1, 0.1])), "eps"),
    (lambda: attacks.PGD(MODEL, eps=torch.tensor([1, 2, 3])), "eps"),
    (lambda: attacks.PGD(MODEL, alpha=-1.0), "alpha"),
    (lambda: attacks.PGD(MODEL, steps=-1), "steps"),
    (lambda: attacks.PGD(MODEL, steps=2.5), "steps"),
    (lambda: attacks.PGD(MODEL, norm="l0"), "norm"),
    (lambda: attacks.PGD(MODEL, loss="mse"), "loss"),
    (lambda: attacks.PGD(MODEL, keep="best"), "keep"),
    (lambda: attacks.PGD(MODEL, restarts=0), "restarts"),
    (lambda: attacks.PGD(MODEL, restart_batch=0), "restart_batch"),
    (lambda: attacks.PGD(MODEL, kappa=float("nan")), "kappa"),
    (lambda: attacks.PGD(MODEL, autocast=torch.float32), "autocast"),
    (lambda: attacks.PGD(MODEL, lo=1.0, hi=0.0), "lo"),
    (lambda: attacks.PGD(MODEL, seed=-1), "seed"),
    (lambda: attacks.PGD(lambda x: x), "model"),
    (lambda: attacks.FATPGD(MODEL, tau=-1), "tau"),
    (lambda: attacks.FATPGD(MODEL, omega=-0.1), "omega"),
    (lambda: attacks.AlternatingPGD(MODEL, schedule=("ce", "kl")), "schedule"),
    (lambda: attacks.AlternatingPGD(MODEL, schedule=()), "schedule"),
    (lambda: attacks.AlternatingPGD(MODEL, schedule="ce"), "schedule"),
    (lambda: attacks.HypocriticalPGD(MODEL, norm=3), "norm"),
    (lambda: attacks.APGD(MODEL, loss="cw"), "loss"),
    (lambda: attacks.APGD(MODEL, n_target_classes=0), "n_target_classes"),
    (lambda: attacks.APGD(MODEL, rho=-0.5), "rho"),
    (lambda: attacks.APGD(MODEL, momentum=1.5), "momentum"),
    (lambda: attacks.APGD(MODEL, eot_iter=0), "eot_iter must be an integer >= 1"),
    (lambda: attacks.APGD(MODEL, early_stop="yes"), "early_stop must be True, False or 'auto'"),
    (lambda: attacks.FAB(MODEL, steps=-1), "steps must be an integer >= 0"),
    (lambda: attacks.FAB(MODEL, restarts=0), "restarts must be an integer >= 1"),
    (lambda: attacks.FAB(MODEL, alpha_max=1.5), r"alpha_max must be a number in \[0, 1\]"),
    (lambda: attacks.FAB(MODEL, beta=-0.1), r"beta must be a number in \[0, 1\]"),
    (lambda: attacks.FAB(MODEL, eta=0.5), "eta must be a finite number >= 1"),
    (lambda: attacks.FAB(MODEL, norm="l3"), "norm must be 'linf' .* or 'l1'"),
    (lambda: attacks.FAB(MODEL, cuda_graph=True), "cuda_graph: FAB"),
    (lambda: attacks.FAB(MODEL, early_stop=None), "early_stop"),
])
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("x, y, match", [
    (X + 1.0, Y, "x must lie in"),
    (X - 1.0, Y, "x must lie in"),
    (torch.where(X > 0.5, float("nan"), X), Y, "x must lie in"),
    ((X * 255).to(torch.uint8), Y, "x must be a floating-point"),
    (torch.rand(3), Y, "x must have a batch dimension"),
    (X, Y[:2], r"y must have shape \(3,\)"),
    (X, Y.to(torch.int32), "y must be an int64"),
    (X, [0, 1, 2], "y must be an int64"),
])
@pytest.mark.parametrize("name", ["pgd", "fat", "alternating", "hypocritical", "apgd"])
def test_bad_inputs(x, y, match, name):
    attack = {
        "pgd": attacks.PGD(MODEL, eps=0.1, steps=1),
        "fat": attacks.FATPGD(MODEL, eps=0.1, steps=1),
        "alternating": attacks.AlternatingPGD(MODEL, eps=0.1, steps=1),
        "hypocritical": attacks.HypocriticalPGD(MODEL, eps=0.1, steps=1),
        "apgd": attacks.APGD(MODEL, eps=0.1, steps=1),
    }[name]
    with pytest.raises(ValueError, match=match):
        attack(x, y)


def test_inputs_outside_a_custom_box():
    attack = attacks.PGD(MODEL, eps=0.1, steps=1, lo=-1.0, hi=1.0)
    attack(X - 0.5, Y)  # inside [-1, 1]
    with pytest.raises(ValueError, match=r"x must lie in \[lo, hi\] = \[-1.0, 1.0\]"):
        attack(X + 0.5, Y)


@pytest.mark.parametrize("call, match", [
    (lambda: attacks.PGD(MODEL, targeted=True)(X, Y), "targets"),
    (lambda: attacks.PGD(MODEL)(X, Y, targets=Y), "targets"),
    (lambda: attacks.PGD(MODEL, targeted=True)(X, Y, targets=Y[:2]), "targets must have shape"),
    (lambda: attacks.PGD(MODEL, targeted=True)(X, Y, targets=Y.float()), "targets must be an int64"),
    (lambda: attacks.FATPGD(MODEL).run(X, Y, targets=Y), "targets"),
    (lambda: attacks.APGD(MODEL)(X, Y, targets=Y), "targets"),
    (lambda: attacks.APGD(MODEL, targeted=True, n_target_classes=5)(X, Y), "n_target_classes"),
    (lambda: attacks.PGD(MODEL, eps=torch.tensor([0.1, 0.2]))(X, Y), "eps must have 1 or 3"),
    (lambda: attacks.PGD(MODEL, alpha=torch.tensor([0.1, 0.2]))(X, Y), "alpha must have 1 or 3"),
    (lambda: attacks.PGD(nn.Identity())(X, Y), "model must return"),
    (lambda: attacks.fat_tau(1.5), "epoch"),
])
def test_bad_calls(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_per_sample_eps_is_accepted_and_respected():
    eps = torch.tensor([0.0, 0.05, 0.2])
    out = attacks.PGD(MODEL, eps=eps, alpha=eps / 2, steps=3, restarts=2, seed=0)(X, Y)
    assert ((out - X).abs().flatten(1).amax(1) <= eps + 1e-6).all()
    assert torch.equal(out[0], X[0])
