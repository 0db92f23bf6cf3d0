"""FAT's early stopping on a hand-built 1-D model whose decisions are known at every step."""
import pytest
import torch
from torch import nn

from fastrobust import attacks
from fastrobust.reference import pgd as ref

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")


def threshold_model():
    """Two classes on a scalar input: class 1 iff x > 0.5 (logit gap 20*(x - 0.5)). The CE
    gradient pushes a label-0 sample up and a label-1 sample down, so each sign step moves
    it by alpha towards (and across) the threshold."""
    model = nn.Linear(1, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-10.0], [10.0]]))
        model.bias.copy_(torch.tensor([5.0, -5.0]))
    return model


# (x, label): correct until 2 steps; wrong at the start; correct until 5 steps (label 0);
# wrong at the start (label 1); correct until 5 steps (label 1).
X = torch.tensor([[0.35], [0.70], [0.05], [0.20], [0.92]], dtype=torch.float64)
Y = torch.tensor([0, 0, 0, 1, 1])
# Output per tau with alpha=0.1, eps=1: the point where the sample is frozen, i.e. where it
# is misclassified for the (tau+1)-th time (tau extra steps after the first misclassification).
EXPECTED = {
    0: [0.55, 0.70, 0.55, 0.20, 0.42],
    1: [0.65, 0.80, 0.65, 0.10, 0.32],
    2: [0.75, 0.90, 0.75, 0.00, 0.22],
}


def run_fat(tau, steps=10, eps=1.0, x=X, y=Y):
    kwargs = dict(eps=eps, alpha=0.1, steps=steps, tau=tau, omega=0.0, random_start=False)
    return attacks.FATPGD(threshold_model(), **kwargs).run(x, y), ref.fat_pgd(threshold_model(), x, y, **kwargs)


@pytest.mark.parametrize("tau", [0, 1, 2])
def test_each_sample_is_output_where_the_counter_runs_out(tau):
    result, reference = run_fat(tau)
    expected = torch.tensor(EXPECTED[tau], dtype=torch.float64)[:, None]
    torch.testing.assert_close(result.x_adv, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-9)
    assert result.success.all()


def test_tau_zero_leaves_samples_wrong_at_the_start_unchanged():
    result, _ = run_fat(0)
    wrong_at_start = torch.tensor([False, True, False, True, False])
    assert torch.equal(result.x_adv[wrong_at_start], X[wrong_at_start])


def test_samples_still_active_after_the_last_step_are_output_unevaluated():
    # two steps: sample 0 steps 0.35 -> 0.45 -> 0.55 and is returned there (no freeze decision)
    result, reference = run_fat(tau=0, steps=2)
    torch.testing.assert_close(result.x_adv[[0, 2, 4], 0], torch.tensor([0.55, 0.25, 0.72], dtype=torch.float64))
    torch.testing.assert_close(result.x_adv, reference, rtol=0, atol=1e-12)
    assert (result.forwards, result.backwards) == (5 * 3, 5 * 2)


def test_projection_bounds_the_extra_steps():
    # eps=0.25 around 0.35: the ball stops sample 0 at 0.6 while its counter runs down
    result, reference = run_fat(tau=2, eps=0.25)
    assert result.x_adv[0, 0].item() == pytest.approx(0.6)
    torch.testing.assert_close(result.x_adv, reference, rtol=0, atol=1e-12)


def test_output_keeps_the_input_order():
    perm = torch.tensor([3, 0, 4, 2, 1])
    result, _ = run_fat(1, x=X[perm], y=Y[perm])
    expected = torch.tensor(EXPECTED[1], dtype=torch.float64)[perm, None]
    torch.testing.assert_close(result.x_adv, expected, rtol=0, atol=1e-9)


def test_tau_at_least_steps_is_plain_pgd_plus_noise():
    model = threshold_model()
    fat = attacks.FATPGD(model, eps=0.3, alpha=0.1, steps=4, tau=4, omega=0.0, random_start=False)(X, Y)
    pgd = attacks.PGD(model, eps=0.3, alpha=0.1, steps=4, random_start=False, keep="last")(X, Y)
    torch.testing.assert_close(fat, pgd, rtol=0, atol=1e-12)


def test_noise_is_seeded_and_scaled_by_omega():
    model = threshold_model()
    a = attacks.FATPGD(model, eps=1.0, alpha=0.0, steps=1, tau=5, omega=0.01, random_start=False, seed=3)(X, Y)
    b = attacks.FATPGD(model, eps=1.0, alpha=0.0, steps=1, tau=5, omega=0.01, random_start=False, seed=3)(X, Y)
    assert torch.equal(a, b)
    assert 0 < (a - X).abs().max() < 0.05


@pytest.mark.parametrize("epoch, tau", [(1, 0), (50, 0), (51, 1), (90, 1), (91, 2), (120, 2)])
def test_dynamic_tau_schedule(epoch, tau):
    assert attacks.fat_tau(epoch) == tau


def test_dynamic_tau_needs_a_one_based_epoch():
    with pytest.raises(ValueError, match="epoch"):
        attacks.fat_tau(0)
