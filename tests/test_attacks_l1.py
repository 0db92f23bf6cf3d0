"""The L1 threat model: the projection onto the L1 ball within the box (against bisection),
APGD-L1 (sparse steps, its checkpoints, AutoAttack's 3 eps / 2 eps / eps schedule) and PGD
with sparse L1 steps: balls, boxes, sparsity, targets, counts and bad arguments."""
import pytest
import torch

from fastrobust.attacks import APGD, PGD
from fastrobust.attacks.apgd_l1 import eps_stages
from fastrobust.attacks.l1_ball import project_l1_box, sparse_l1_step_
from fastrobust.reference.l1_ball import project_l1_box as reference_projection


def l1(delta):
    return delta.flatten(1).abs().sum(1)


@pytest.mark.parametrize("box", [(0.0, 1.0), (-1.0, 0.5)])
def test_projection_matches_bisection_and_is_feasible(box):
    lo, hi = box
    gen = torch.Generator().manual_seed(5)
    for dims in (1, 2, 7, 64):
        x = lo + (hi - lo) * torch.rand(40, dims, generator=gen, dtype=torch.float64)
        y = torch.randn(40, dims, generator=gen, dtype=torch.float64) * torch.logspace(-2, 0.5, 40).double()[:, None]
        y[::5, : dims // 2] = 0
        eps = 3 * torch.rand(40, generator=gen, dtype=torch.float64)
        d = project_l1_box(x, y, eps, lo, hi)
        expected = torch.stack([reference_projection(x[i], y[i], float(eps[i]), lo, hi) for i in range(40)])
        torch.testing.assert_close(d, expected, atol=1e-9, rtol=0)
        assert (l1(d) <= eps + 1e-9).all()
        assert ((x + d) >= lo - 1e-12).all() and ((x + d) <= hi + 1e-12).all()
        # a point already inside the ball and the box is its own projection
        torch.testing.assert_close(project_l1_box(x, d, eps, lo, hi), d, atol=1e-9, rtol=0)


def test_sparse_step_moves_the_largest_coordinates_only():
    x0 = torch.full((2, 100), 0.5)
    grad = torch.randn(2, 100, generator=torch.Generator().manual_seed(0))
    x = x0.clone()
    sparse_l1_step_(x, x0, grad, torch.tensor([10.0]), torch.tensor([0.2]), 0.95, 0.0, 1.0)
    moved = (x - x0) != 0
    assert moved.sum(1).tolist() == [5, 5]
    top = grad.abs().topk(5, dim=1).indices
    assert torch.equal(moved.nonzero()[:, 1].reshape(2, 5).sort(1).values, top.sort(1).values)
    torch.testing.assert_close(l1(x - x0), torch.tensor([0.2, 0.2]))
    assert torch.equal(torch.sign((x - x0).gather(1, top)), torch.sign(grad.gather(1, top)))


@pytest.mark.parametrize("loss, targeted", [("ce", False), ("dlr", False), ("dlr", True)])
def test_apgd_l1_stays_in_the_ball_and_breaks_more_than_noise(loss, targeted, digits_model, digits_test_set):
    x, y = digits_test_set
    result = APGD(digits_model, eps=1.0, norm="l1", loss=loss, targeted=targeted, n_target_classes=3, steps=30,
                  seed=0).run(x, y)
    assert (l1(result.x_adv - x) <= 1.0 + 1e-5).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        pred = digits_model(result.x_adv).argmax(1)
        clean_wrong = digits_model(x).argmax(1) != y
        noise = torch.randn_like(x)
        noisy = (x + noise / l1(noise).reshape(-1, 1, 1, 1)).clamp(0, 1)
        noise_fooled = (digits_model(noisy).argmax(1) != y) & ~clean_wrong
    assert torch.equal(result.success, pred != y)
    assert (result.success & ~clean_wrong).sum() > 3 * noise_fooled.sum() + 10


def test_apgd_l1_reaches_given_targets(digits_model, digits_test_set):
    x, y = digits_test_set[0][:64], digits_test_set[1][:64]
    targets = (y + 1) % 10
    result = APGD(digits_model, eps=2.0, norm="l1", loss="ce", targeted=True, steps=30, seed=0).run(x, y, targets)
    with torch.no_grad():
        pred = digits_model(result.x_adv).argmax(1)
    assert result.success.sum() > 10 and torch.equal(result.success, pred == targets)


def test_eps_schedule_runs_three_stages_and_counts_their_passes(digits_model, digits_test_set):
    assert eps_stages(100) == [(3.0, 30), (2.0, 30), (1.0, 40)]
    assert eps_stages(10) == [(3.0, 3), (2.0, 3), (1.0, 4)]
    x, y = digits_test_set[0][:64], digits_test_set[1][:64]
    robust = int((digits_model(x).argmax(1) == y).sum())
    plain = APGD(digits_model, eps=1.0, norm="l1", steps=10, seed=0, early_stop=False).run(x, y)
    staged = APGD(digits_model, eps=1.0, norm="l1", steps=10, seed=0, eps_schedule=True, early_stop=False).run(x, y)
    assert plain.backwards == robust * 11
    assert staged.backwards == robust * (10 + 3)  # each stage starts with a gradient at its start
    assert (l1(staged.x_adv - x) <= 1.0 + 1e-5).all()  # only the last stage's points count
    with pytest.raises(ValueError, match="eps_schedule: .* APGD-L1's; norm is 'linf'"):
        APGD(digits_model, eps_schedule=True)


@pytest.mark.parametrize("schedule", [False, True])
def test_apgd_l1_early_stop_keeps_the_successes(schedule, digits_model, digits_test_set):
    """Rows leave at their first success (in the last stage only, with the schedule): the same
    rows succeed, with fewer passes."""
    x, y = digits_test_set
    kwargs = dict(eps=1.0, norm="l1", steps=20, seed=0, eps_schedule=schedule)
    full = APGD(digits_model, early_stop=False, **kwargs).run(x, y)
    early = APGD(digits_model, early_stop=True, **kwargs).run(x, y)
    assert torch.equal(early.success, full.success) and early.success.any()
    assert early.backwards < full.backwards
    assert (l1(early.x_adv - x) <= 1.0 + 1e-5).all()
    with torch.no_grad():
        assert torch.equal(digits_model(early.x_adv).argmax(1) != y, early.success)


def test_pgd_l1_sparse_steps(digits_model, digits_test_set):
    x, y = digits_test_set
    one = PGD(digits_model, eps=2.0, alpha=0.5, steps=1, norm="l1", random_start=False, keep="last")(x, y)
    assert ((one - x) != 0).flatten(1).sum(1).max() <= 3  # round(0.05 * 64) coordinates per step
    result = PGD(digits_model, eps=1.0, alpha=0.25, steps=20, norm=1, restarts=2, seed=0).run(x, y)
    assert (l1(result.x_adv - x) <= 1.0 + 1e-5).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(result.success, digits_model(result.x_adv).argmax(1) != y)
    assert result.success.float().mean() > 0.1
    with pytest.raises(ValueError, match=r"l1_sparsity must be a number in \[0, 1\)"):
        PGD(digits_model, norm="l1", l1_sparsity=1.0)


def test_attacks_without_l1_say_so(digits_model):
    from fastrobust.attacks import FATPGD, AlternatingPGD
    for cls in (FATPGD, AlternatingPGD):
        with pytest.raises(ValueError, match="norm must be 'linf' .* or 'l2' .* for this attack, got 'l1'"):
            cls(digits_model, norm="l1")
