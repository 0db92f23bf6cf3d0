"""fastrobust.eval.masking: every gradient-masking check fires (GradientMaskingWarning) on a
model built to mask gradients (the trained digits net behind x -> round(4x)/4, whose gradient
is zero) and stays quiet on the plain net; BPDA through the quantisation restores the attack;
EOT averages a randomised model."""
import warnings

import pytest
import torch
from torch import nn

from fastrobust.attacks import PGD
from fastrobust.data import load_digits
from fastrobust.eval import (BPDA, EOT, CheckResult, GradientMaskingWarning, attack_loss_curve, bpda_wrap,
                             evaluate, run_checks, train_surrogate)
from fastrobust.eval.masking import attack_accuracy
from fastrobust.testing import train_digits_cnn

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")

EPS = 0.1  # PGD leaves about 40 % of the plain net's points robust
N = 64
# Small, quick versions of the checks (the defaults are larger).
OPTIONS = {
    "eps_sweep": {"steps": 10},
    "steps": {"steps": (5, 20), "restarts": 3},
    "loss_curve": {"steps": 10},
    "transfer": {"steps": 10},
}


class Quantize(nn.Module):
    """x -> round(4x)/4: piecewise constant, so its gradient is zero everywhere."""

    def forward(self, x):
        return torch.round(x * 4) / 4


class NoisyInput(nn.Module):
    """A randomised defence: Gaussian noise on the input at every call, also in eval mode."""

    def __init__(self, net, sigma=0.3):
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn_like(x))


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """These modules run with one intra-op thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def train_set():
    return load_digits("train")


@pytest.fixture(scope="module")
def points():
    x, y = load_digits("test")
    return x[:N], y[:N]


@pytest.fixture(scope="module")
def plain(train_set):
    x, y = train_set
    return train_digits_cnn(x, y)


@pytest.fixture(scope="module")
def masked(plain):
    return nn.Sequential(Quantize(), plain).eval()


@pytest.fixture(scope="module")
def surrogate(train_set):
    """Plain standard training, quick: the transfer check's source model."""
    x, y = train_set
    return train_surrogate(x, y, epochs=4, width=8, seed=1)


def _run(model, points, name, surrogate, warn=True):
    x, y = points
    return run_checks(model, x, y, EPS, checks=[name], surrogate=surrogate, options={name: OPTIONS.get(name, {})},
                      warn=warn)[0]


CHECKED = ["zero_gradients", "eps_sweep", "steps", "loss_curve", "transfer"]


@pytest.mark.parametrize("name", CHECKED)
def test_check_fires_on_masked_model(name, masked, points, surrogate):
    with pytest.warns(GradientMaskingWarning, match=name):
        result = _run(masked, points, name, surrogate)
    assert isinstance(result, CheckResult) and result.name == name
    assert result.passed is False and result.fired and result.message
    assert result.to_dict()["passed"] is False


@pytest.mark.parametrize("name", CHECKED + ["randomness"])
def test_check_is_quiet_on_plain_model(name, plain, points, surrogate):
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientMaskingWarning)
        result = _run(plain, points, name, surrogate)
    assert result.passed is True, result.message


def test_check_data(plain, masked, points, surrogate):
    x, y = points
    sweep = _run(plain, points, "eps_sweep", surrogate).data
    assert sweep["eps"] == [0.0, EPS / 4, EPS / 2, EPS, 2 * EPS, 1.0] and len(sweep["accuracy"]) == 6
    assert sweep["accuracy"][0] > 0.85 and sweep["accuracy"][-1] == 0.0
    steps = _run(masked, points, "steps", surrogate, warn=False).data
    assert steps["steps"] == [0, 5, 20] and steps["accuracy"][0] == steps["accuracy"][-1]  # no gradient, no move
    curve = attack_loss_curve(plain, x, y, EPS, steps=6)
    assert len(curve) == 7 and curve[-1] > curve[0]
    assert len(set(attack_loss_curve(masked, x, y, EPS, steps=4))) == 1  # flat: a zero gradient never moves


def test_randomness_check_fires_on_random_model(plain, points):
    with pytest.warns(GradientMaskingWarning, match="EOT"):
        result = run_checks(NoisyInput(plain), *points, EPS, checks=["randomness"])[0]
    assert result.passed is False and result.data["max_difference"] > 0


def test_bpda_restores_attack_strength(plain, masked, points):
    x, y = points
    eps = 0.2  # the quantisation absorbs much of a smaller perturbation

    def pgd(model):
        return lambda b: PGD(model, eps=eps, alpha=eps / 4, steps=10, seed=b)

    through_bpda = nn.Sequential(BPDA(Quantize()), plain).eval()
    with torch.no_grad():
        assert torch.equal(through_bpda(x), masked(x))  # the same model forward
    masked_acc = attack_accuracy(masked, x, y, pgd(masked))
    bpda_acc = attack_accuracy(masked, x, y, pgd(through_bpda), judge=masked)
    assert masked_acc > 0.8
    assert bpda_acc < masked_acc - 0.4, (bpda_acc, masked_acc)
    # bpda_wrap by type gives the same model with straight-through gradients
    wrapped = bpda_wrap(masked, Quantize)
    assert isinstance(wrapped[0], BPDA) and isinstance(masked[0], Quantize)  # a copy by default
    xg = x[:4].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(wrapped(xg).sum(), xg)
    assert grad.abs().sum() > 0
    assert isinstance(bpda_wrap(masked, "0")[0], BPDA)
    with pytest.raises(ValueError, match="no submodules named"):
        bpda_wrap(masked, "nope")
    # an explicit approximation: fn's output is kept, the gradient is approx's
    soft = BPDA(Quantize(), approx=lambda t: 2 * t)
    xs = torch.rand(3, 1, 8, 8, requires_grad=True)
    out = soft(xs)
    assert torch.equal(out.detach(), Quantize()(xs.detach()))
    (g,) = torch.autograd.grad(out.sum(), xs)
    assert torch.allclose(g, torch.full_like(g, 2.0))
    # tuple outputs (a layer returning (features, probe logits)) need an approx of the same structure
    pair = BPDA(lambda t: (torch.round(t), t.flatten(1)[:, :3] * 0), approx=lambda t: (t, t.flatten(1)[:, :3]))
    feats, probe = pair(xs)
    assert torch.equal(feats.detach(), torch.round(xs.detach())) and torch.equal(probe.detach(), torch.zeros(3, 3))
    (g,) = torch.autograd.grad(feats.sum() + probe.sum(), xs)
    assert g.flatten(1)[:, :3].eq(2).all() and g.flatten(1)[:, 3:].eq(1).all()
    with pytest.raises(ValueError, match="same structure"):
        BPDA(lambda t: (t, t))(xs)


def test_evaluate_through_bpda_and_report_checks(plain, masked, points):
    x, y = points
    with pytest.warns(GradientMaskingWarning):
        report = evaluate(masked, (x, y), attacks=["pgd20"], eps=0.2, checks=["zero_gradients", "loss_curve"],
                          check_options={"loss_curve": {"steps": 5}})
    assert {c.name for c in report.warnings} == {"zero_gradients", "loss_curve"}
    broken = evaluate(masked, (x, y), attacks=["pgd20"], eps=0.2, bpda=Quantize)
    assert broken.metadata["attack_model"] == "Sequential"
    assert broken.clean_accuracy == report.clean_accuracy
    assert broken.robust_accuracy < report.robust_accuracy - 0.4


def test_eot_averages_a_random_model(plain, points):
    x, y = points
    noisy = NoisyInput(plain, sigma=0.3)
    # a deterministic model is unchanged (folded and looped)
    for fold in (True, False):
        assert torch.allclose(EOT(plain, samples=3, fold=fold)(x), plain(x), atol=1e-5)
    # averaging: the spread over repeated calls shrinks with the samples
    single = torch.stack([noisy(x[:16]) for _ in range(6)]).std(dim=0).mean()
    eot = EOT(noisy, samples=16)
    averaged = torch.stack([eot(x[:16]) for _ in range(6)]).std(dim=0).mean()
    assert averaged < 0.5 * single
    # "probs" averaging returns log-probabilities
    probs = EOT(noisy, samples=4, average="probs")(x[:8])
    assert torch.allclose(probs.exp().sum(dim=1), torch.ones(8), atol=1e-4)
    # tuple outputs are averaged element-wise
    pair = EOT(nn.Sequential(plain, _Pair()), samples=2)(x[:5])
    assert isinstance(pair, tuple) and pair[0].shape == (5, 10) and pair[1].shape == (5, 10)
    # the attacks and evaluate run on it (EOT shortcut: attack EOT(model, 4), judge the model)
    report = evaluate(noisy, (x[:32], y[:32]), attacks=["fat"], eps=EPS, eot=4)
    assert 0 <= report.robust_accuracy <= report.clean_accuracy
    result = PGD(EOT(noisy, samples=4), eps=EPS, alpha=EPS / 4, steps=3, seed=0).run(x[:16], y[:16])
    assert result.x_adv.shape == x[:16].shape and (result.x_adv - x[:16]).abs().max() <= EPS + 1e-6
    with pytest.raises(ValueError):
        EOT(plain, samples=0)


class _Pair(nn.Module):
    def forward(self, z):
        return z, 2 * z
