"""HopSkipJump (fastrobust.attacks.HopSkipJump): convergence to the exact minimal distance of a
linear model, decisions only (no backward pass), targets, the eps projection and the clean
check, counts and bad arguments."""
import math

import pytest
import torch

from fastrobust.attacks import HopSkipJump, functional
from fastrobust.eval.presets import PRESETS
from test_attacks_deepfool import DUAL, linear_problem
from test_attacks_square import Guarded


@pytest.mark.parametrize("norm, within", [("l2", 1.03), ("linf", 1.06)])
def test_converges_to_the_minimal_distance_of_a_linear_model(norm, within):
    model, x, y = linear_problem()
    result = HopSkipJump(model, norm=norm, iterations=20, seed=0).run(x, y)
    assert result.success.all() and result.backwards == 0
    w, b = model[1].weight.detach(), model[1].bias.detach()
    f = x.flatten(1) @ w.t() + b
    exact = torch.tensor([min(abs(float(f[i, k] - f[i, y[i]])) / float((w[k] - w[y[i]]).norm(p=DUAL[norm]))
                              for k in range(5) if k != y[i]) for i in range(64)], dtype=torch.float64)
    delta = (result.x_adv - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)
    ratio = size / exact
    assert (ratio >= 1 - 1e-6).all() and ratio.median() <= within, (ratio.median(), ratio.max())


def test_decisions_only_on_a_cnn(digits_model, digits_test_set):
    x, y = digits_test_set[0][:32].requires_grad_(True), digits_test_set[1][:32]
    result = HopSkipJump(Guarded(digits_model), iterations=3, seed=0).run(x, y)
    assert result.backwards == 0 and not result.x_adv.requires_grad
    assert result.success.float().mean() > 0.9  # unbounded: a start is found for nearly every row
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1


def test_bounded_beats_random_noise(digits_model, digits_test_set):
    x, y = digits_test_set[0][:64], digits_test_set[1][:64]
    eps = 0.6
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    noisy = (x + eps * noise / noise.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)).clamp(0, 1)
    with torch.no_grad():
        noise_robust = (digits_model(noisy).argmax(1) == y).float().mean()
    result = HopSkipJump(digits_model, eps=eps, iterations=10, seed=0).run(x, y)
    assert ((result.x_adv - x).flatten(1).norm(dim=1) <= eps + 1e-5).all()
    assert (1 - result.success.float().mean()) < noise_robust - 0.2


def test_targeted_reaches_its_targets_and_clean_misses_stay(digits_model, digits_test_set):
    x, y = digits_test_set
    targets = (y + 1) % 10
    result = HopSkipJump(digits_model, iterations=3, targeted=True, seed=0).run(x[:32], y[:32], targets[:32])
    with torch.no_grad():
        pred = digits_model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred == targets[:32]) and result.success.float().mean() > 0.9
    wrong = digits_model(x).argmax(1) != y
    out = HopSkipJump(digits_model, iterations=1, seed=0)(x, y)
    assert torch.equal(out[wrong], x[wrong])


def test_functional_form_and_preset(digits_model, digits_test_set):
    x, y = digits_test_set[0][:8], digits_test_set[1][:8]
    torch.testing.assert_close(functional.hop_skip_jump(digits_model, x, y, iterations=2, seed=1),
                               HopSkipJump(digits_model, iterations=2, seed=1)(x, y))
    attack = PRESETS["hsj"].build(digits_model, 0.5, norm="l2")
    assert isinstance(attack, HopSkipJump)
    assert (attack.iterations, attack.init_evals, attack.max_evals, attack.gamma) == (40, 100, 10000, 1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"iterations": -1}, "iterations must be an integer >= 0"),
    ({"init_evals": 0}, "init_evals must be an integer >= 1"),
    ({"max_batch": 0}, "max_batch must be an integer >= 1"),
    ({"gamma": 0.0}, "gamma must be a finite number > 0"),
    ({"gamma": math.nan}, "gamma must be a finite number > 0"),
    ({"cuda_graph": True}, "cuda_graph: HopSkipJump"),
])
def test_bad_arguments_name_the_argument(kwargs, message, digits_model):
    with pytest.raises(ValueError, match=message):
        HopSkipJump(digits_model, **kwargs)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_matches_the_reference_loop(norm, digits_model, digits_test_set):
    """The batched attack and the sample-by-sample reference (different random draws): the
    same distances to within a few percent, on a linear model and on the digits CNN."""
    from fastrobust.reference.hop_skip_jump import hop_skip_jump

    def size(a, x):
        d = (a - x).flatten(1)
        return d.norm(dim=1) if norm == "l2" else d.abs().amax(1)

    model, x, y = linear_problem()
    x, y = x[:24], y[:24]
    ours = size(HopSkipJump(model, norm=norm, iterations=10, seed=0)(x, y), x).median()
    theirs = size(hop_skip_jump(model, x, y, norm, iterations=10), x).median()
    assert abs(ours / theirs - 1) < 0.03, (ours, theirs)
    x, y = digits_test_set[0][:24], digits_test_set[1][:24]
    ours_attack = HopSkipJump(digits_model, norm=norm, iterations=4, seed=0).run(x, y)
    reference = hop_skip_jump(digits_model, x, y, norm, iterations=4)
    with torch.no_grad():
        reference_fooled = digits_model(reference).argmax(1) != y
    both = ours_attack.success & reference_fooled
    ratio = size(ours_attack.x_adv, x)[both].median() / size(reference, x)[both].median()
    assert abs(ratio - 1) < 0.15, ratio
