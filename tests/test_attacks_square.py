"""The Square attack (fastrobust.attacks.Square) and its schedule (fastrobust.reference.square):
the threat ball and the box, no gradients, query counts, AutoAttack's clean check and
restarts, targets, the reference loop's robust accuracy, and bad arguments."""
import math

import pytest
import torch
from torch import nn

from fastrobust.attacks import Square, functional
from fastrobust.eval.presets import PRESETS
from fastrobust.reference import square as ref

NORMS = {"linf": 0.15, "l2": 0.5, "l1": 2.0}


def robust_accuracy(model, x_adv, y):
    with torch.no_grad():
        return 100.0 * (model(x_adv).argmax(1) == y).float().mean().item()


def test_p_schedule_halves_at_autoattacks_iterations():
    p = [ref.p_selection(0.8, it, 5000) for it in (0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000,
                                                   2001, 4000, 4001, 6000, 6001, 8000, 8001, 9999)]
    divisors = [1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256, 512, 512]
    assert p == pytest.approx([0.8 / d for d in divisors])
    # rescaled: iteration 50 of 100 counts as 5000 of 10000
    assert ref.p_selection(0.8, 50, 100, rescale_schedule=True) == pytest.approx(0.8 / 128)


def test_window_sides():
    assert ref.window_side(0.8, 32, 32, "linf") == 29  # round(sqrt(0.8 * 1024))
    assert ref.window_side(0.8 / 512, 32, 32, "linf") == 1
    assert ref.window_side(0.8 / 512, 32, 32, "l2") == 3  # at least 3
    assert ref.window_side(0.8 / 16, 32, 32, "l2") == 7  # 7.2 -> 7, odd
    assert ref.window_side(0.8 / 8, 32, 32, "l2") == 11  # 10.1 -> 10 -> 11
    assert ref.window_side(0.8, 8, 8, "l2") == 7 and ref.window_side(1.0, 8, 8, "l2") == 8  # capped at H


def test_l2_bump_is_a_unit_positive_over_negative_block():
    for side in (1, 2, 3, 6, 7):
        b = ref.bump(side)
        assert b.shape == (side, side)
        if side > 1:
            assert b.norm().item() == pytest.approx(1.0)
            assert (b[: side // 2] >= 0).all() and (b[side // 2:] <= 0).all()
    r = ref.bump_rectangle(3, 3)
    assert r[1, 1] > r[0, 1] > 0 and r[0, 0] == r[0, 1]  # rings: the centre counts every ring


def test_l1_bump_has_unit_mass_and_steeper_rings():
    for side in (3, 5, 7):
        b = ref.bump(side, norm="l1")
        assert b.abs().sum().item() == pytest.approx(1.0)
        assert (b[: side // 2] >= 0).all() and (b[side // 2:] <= 0).all()
    l1, l2 = ref.bump_rectangle(5, 5, norm="l1"), ref.bump_rectangle(5, 5, norm="l2")
    assert l1[2, 2] / l1[0, 0] > l2[2, 2] / l2[0, 0]  # rings weighted 1/(k+1)^4, not ^2


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_stays_in_the_ball_and_the_box_and_never_takes_a_gradient(norm, digits_model, digits_test_set):
    x, y = digits_test_set[0][:64], digits_test_set[1][:64]
    eps = NORMS[norm]
    result = Square(digits_model, eps=eps, norm=norm, queries=200, seed=0).run(x, y)
    delta = (result.x_adv - x).flatten(1)
    size = {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "l1": delta.abs().sum(1)}[norm]
    assert (size <= eps + 1e-6).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert result.backwards == 0
    robust = int((~result.success).sum())
    clean_correct = int((digits_model(x).argmax(1) == y).sum())
    # the clean check (every row), then per attacked row: its start, at most 200 candidates, the result
    assert 64 + clean_correct * 2 <= result.forwards <= 64 + clean_correct * (200 + 2)
    assert result.forwards >= 64 + 2 * clean_correct + robust * 200  # rows still robust used every query
    assert robust_accuracy(digits_model, result.x_adv, y) == pytest.approx(100.0 * robust / 64)


class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("the Square attack took a gradient")


class Guarded(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(NoBackward.apply(x))


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_no_backward_pass_with_a_model_that_refuses_one(norm, digits_model, digits_test_set):
    x, y = digits_test_set[0][:32].requires_grad_(True), digits_test_set[1][:32]
    result = Square(Guarded(digits_model), eps=NORMS[norm], norm=norm, queries=50, seed=1).run(x, y)
    assert result.backwards == 0 and not result.x_adv.requires_grad


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_beats_random_noise_of_the_same_size(norm, digits_model, digits_test_set):
    x, y = digits_test_set
    eps = NORMS[norm]
    gen = torch.Generator().manual_seed(0)
    if norm == "linf":  # random corners of the ball: the strongest random noise
        noise = eps * torch.where(torch.rand(x.shape, generator=gen) < 0.5, -1.0, 1.0)
    else:
        noise = torch.randn(x.shape, generator=gen)
        noise = eps * noise / noise.flatten(1).norm(p=2 if norm == "l2" else 1, dim=1).reshape(-1, 1, 1, 1)
    noisy = robust_accuracy(digits_model, (x + noise).clamp(0, 1), y)
    attacked = robust_accuracy(digits_model, Square(digits_model, eps=eps, norm=norm, queries=300, seed=0)(x, y), y)
    assert attacked < noisy - 15, (attacked, noisy)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_matches_the_reference_loop(norm, digits_model, digits_test_set):
    """Robust accuracy of the batched attack and of the sample-by-sample reference, 2 seeds
    each on 60 points (they draw different random numbers: within 4 points on average)."""
    x, y = digits_test_set[0][:60], digits_test_set[1][:60]
    eps, queries = NORMS[norm], 150
    ours = sum(robust_accuracy(digits_model, Square(digits_model, eps=eps, norm=norm, queries=queries, seed=s)(x, y), y)
               for s in range(2)) / 2
    theirs = sum(robust_accuracy(digits_model, ref.square_attack(digits_model, x, y, eps, norm, queries, seed=s)[0], y)
                 for s in range(2)) / 2
    assert abs(ours - theirs) <= 4.0, (ours, theirs)


def test_targeted_reaches_its_targets(digits_model, digits_test_set):
    x, y = digits_test_set[0][:64], digits_test_set[1][:64]
    targets = (y + 1) % 10
    result = Square(digits_model, eps=0.3, queries=400, seed=0, targeted=True).run(x, y, targets)
    with torch.no_grad():
        pred = digits_model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred == targets)
    assert result.success.float().mean() > 0.5
    with pytest.raises(ValueError, match="targets: a targeted Square attack needs targets"):
        Square(digits_model, targeted=True)(x, y)
    with pytest.raises(ValueError, match="targets: given to an untargeted Square attack"):
        Square(digits_model)(x, y, targets)


def test_misclassified_points_are_left_alone_and_restarts_only_retry_the_robust(digits_model, digits_test_set):
    x, y = digits_test_set  # about 3 % misclassified
    wrong = digits_model(x).argmax(1) != y
    assert wrong.any()
    one = Square(digits_model, eps=0.1, queries=20, seed=3).run(x, y)
    two = Square(digits_model, eps=0.1, queries=20, seed=3, restarts=2).run(x, y)
    assert torch.equal(one.x_adv[wrong], x[wrong]) and one.success[wrong].all()
    # the second restart runs on the rows the first left robust, with up to 20 + 2 calls each
    still = int((~one.success).sum())
    assert two.forwards - one.forwards <= still * 22 and two.forwards > one.forwards
    assert int(two.success.sum()) >= int(one.success.sum())


def test_per_sample_eps_and_eps_zero(digits_model, digits_test_set):
    x, y = digits_test_set[0][:16], digits_test_set[1][:16]
    eps = torch.linspace(0, 0.2, 16)
    x_adv = Square(digits_model, eps=eps, queries=30, seed=0)(x, y)
    assert ((x_adv - x).flatten(1).abs().amax(1) <= eps + 1e-6).all()
    result = Square(digits_model, eps=0.0, queries=10, seed=0).run(x, y)
    assert torch.equal(result.x_adv, x)
    assert torch.equal(result.success, digits_model(x).argmax(1) != y)


def test_ce_loss_and_the_functional_form(digits_model, digits_test_set):
    x, y = digits_test_set[0][:32], digits_test_set[1][:32]
    result = functional.square(digits_model, x, y, eps=0.15, queries=100, loss="ce", seed=0, return_result=True)
    assert result.success.any() and torch.isfinite(result.loss).all()
    torch.testing.assert_close(functional.square(digits_model, x, y, eps=0.15, queries=100, loss="ce", seed=0),
                               result.x_adv)


def test_the_preset_is_autoattacks_square(digits_model):
    attack = PRESETS["square"].build(digits_model, 8 / 255, seed=0)
    assert isinstance(attack, Square)
    assert (attack.queries, attack.p_init, attack.loss, attack.rescale_schedule) == (5000, 0.8, "margin", False)


@pytest.mark.parametrize("kwargs, message", [
    ({"norm": "l0"}, "norm must be .linf. .* or .l1. .* for this attack"),
    ({"p_init": 0.0}, r"p_init must be a number in \(0, 1\]"),
    ({"p_init": 1.5}, r"p_init must be a number in \(0, 1\]"),
    ({"loss": "dlr"}, "loss must be one of"),
    ({"queries": -1}, "queries must be an integer >= 0"),
    ({"restarts": 0}, "restarts must be an integer >= 1"),
    ({"cuda_graph": True}, "cuda_graph: Square takes no gradient steps"),
])
def test_bad_arguments_name_the_argument(kwargs, message, digits_model):
    with pytest.raises(ValueError, match=message):
        Square(digits_model, **kwargs)


def test_inputs_must_be_images():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    with pytest.raises(ValueError, match=r"x must be images \(N, C, H, W\)"):
        Square(model, eps=0.1, queries=5)(torch.rand(4, 6), torch.zeros(4, dtype=torch.long))


def test_a_model_returning_nan_keeps_the_clean_point():
    class NaNModel(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), math.nan)

    x, y = torch.rand(3, 1, 4, 4), torch.zeros(3, dtype=torch.long)
    result = Square(NaNModel(), eps=0.1, queries=5, seed=0).run(x, y)
    assert torch.equal(result.x_adv, x) and not result.success.any()
    assert result.nonfinite.all() and (result.loss == -math.inf).all()
