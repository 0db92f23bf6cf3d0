"""FAB / FAB-T (fastrobust.attacks.FAB): its projection against the bisection reference, the
exact boundary distance of a linear model, the sample-by-sample reference on a trained CNN,
targets, restarts as row groups, early stopping, the preset and counts (bad arguments:
test_attacks_errors.py)."""
import math

import pytest
import torch

from fastrobust.attacks import FAB, functional
from fastrobust.attacks.boundary_projection import hyperplane_step
from fastrobust.eval.presets import PRESETS
from fastrobust.reference.fab import fab as reference_fab
from fastrobust.reference.fab import hyperplane_step as reference_step
from linear_problem import boundary_distances, linear_problem

NORMS = ["linf", "l2", "l1"]
P = {"linf": math.inf, "l2": 2, "l1": 1}
DUAL = {"linf": 1, "l2": 2, "l1": math.inf}


def sizes(delta, norm):
    return delta.flatten(1).norm(p=P[norm], dim=1)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("box", [(0.0, 1.0), (-0.5, 2.0)])
def test_projection_matches_the_reference(norm, box):
    """Sorted breakpoints (the attack) and bisection / one coordinate at a time (the reference)
    give the same step; reachable hyperplanes are reached, the box is kept, and where the box
    does not reach the hyperplane the step is the box corner."""
    lo, hi = box
    gen = torch.Generator().manual_seed(3)
    rows, dims = 60, 13
    t = lo + (hi - lo) * torch.rand(rows, dims, generator=gen, dtype=torch.float64)
    w = torch.randn(rows, dims, generator=gen, dtype=torch.float64)
    w[::4, :3] = 0  # coordinates that cannot move
    scale = torch.where(torch.arange(rows) % 3 == 0, 20.0, 0.5).double()  # some hyperplanes out of reach
    b = (w * t).sum(1) + scale * torch.randn(rows, generator=gen, dtype=torch.float64)
    d = hyperplane_step(t, w, b, norm, lo, hi)
    expected = torch.stack([reference_step(t[i], w[i], float(b[i]), norm, lo, hi) for i in range(rows)])
    torch.testing.assert_close(d, expected, atol=1e-9, rtol=0)
    z = t + d
    assert (z >= lo - 1e-12).all() and (z <= hi + 1e-12).all()
    assert (d[::4, :3] == 0).all()
    residual = (w * z).sum(1) - b
    side = torch.where((w * t).sum(1) >= b, 1.0, -1.0).double()[:, None]  # t's side: it moves against it
    room = torch.where(w * side > 0, t - lo, hi - t)
    corner = (d.abs() >= room - 1e-12) | (w == 0)
    reached = residual.abs() < 1e-9
    assert (reached | corner.all(1)).all()
    assert reached.float().mean() > 0.5


@pytest.mark.parametrize("norm", NORMS)
def test_closest_point_of_a_linear_model(norm):
    """For f(x) = W x + b the distance to the nearest boundary is min_k |f_k - f_y| /
    ||w_k - w_y||_dual. FAB finds a misclassified point at most 1 % farther (its overshoot
    eta and back-step beta leave it cycling just past the boundary: 0.5 % here), never closer."""
    model, x, y = linear_problem()
    result = FAB(model, eps=math.inf, norm=norm, steps=100).run(x, y)
    assert result.success.all()
    exact = boundary_distances(model, x, y, DUAL[norm])
    ratio = sizes(result.x_adv - x, norm) / exact
    assert (ratio >= 1 - 1e-9).all() and (ratio <= 1.01).all(), (ratio.min(), ratio.max())


@pytest.mark.parametrize("norm", NORMS)
def test_matches_the_reference_on_a_cnn(norm, digits_model, digits_test_set):
    """The batched attack and the sample-by-sample reference (float64 both) take the same
    steps: same successes, same points."""
    model = _double(digits_model)
    x, y = digits_test_set[0][:24].double(), digits_test_set[1][:24]
    eps = {"linf": 0.15, "l2": 0.8, "l1": 4.0}[norm]
    ours = FAB(model, eps=eps, norm=norm, steps=20, early_stop=False).run(x, y)
    theirs = reference_fab(model, x, y, norm, steps=20, eps=eps)
    with torch.no_grad():
        fooled = model(theirs).argmax(1) != y
    assert torch.equal(ours.success, fooled)
    torch.testing.assert_close(ours.x_adv, theirs, atol=1e-7, rtol=0)
    assert (sizes(ours.x_adv - x, norm) <= eps * (1 + 1e-9)).all()


def test_targets_are_reached_and_match_the_reference(digits_model, digits_test_set):
    model = _double(digits_model)
    x, y = digits_test_set[0][:24].double(), digits_test_set[1][:24]
    targets = (y + 3) % 10
    ours = FAB(model, eps=0.3, norm="linf", steps=30, targeted=True, early_stop=False).run(x, y, targets)
    with torch.no_grad():
        pred = model(ours.x_adv).argmax(1)
    assert ours.success.any()
    assert torch.equal(ours.success, pred == targets)
    theirs = reference_fab(model, x, y, "linf", steps=30, eps=0.3, targets=targets)
    torch.testing.assert_close(ours.x_adv, theirs, atol=1e-7, rtol=0)


def test_fab_t_runs_the_ranked_classes_on_the_points_still_robust(digits_model, digits_test_set):
    """FAB-T: one row group per runner-up class, each on the points the earlier ones left
    robust; every success is a misclassification inside the ball; more classes never break
    fewer points; restarts folded in one pass give the same result as one per pass."""
    x, y = digits_test_set[0][:64], digits_test_set[1][:64]
    one = FAB(digits_model, eps=0.1, targeted=True, n_target_classes=1, steps=30).run(x, y)
    nine = FAB(digits_model, eps=0.1, targeted=True, n_target_classes=9, steps=30).run(x, y)
    assert bool((one.success <= nine.success).all()) and nine.success.sum() > one.success.sum()
    with torch.no_grad():
        assert torch.equal(nine.success, digits_model(nine.x_adv).argmax(1) != y)
    assert ((nine.x_adv - x).abs().flatten(1).amax(1) <= 0.1 + 1e-6).all()
    folded = FAB(digits_model, eps=0.1, targeted=True, n_target_classes=3, steps=10, restart_batch=None).run(x, y)
    serial = FAB(digits_model, eps=0.1, targeted=True, n_target_classes=3, steps=10, restart_batch=1).run(x, y)
    assert torch.equal(folded.success, serial.success)
    # the serial run attacks only the points still robust: fewer passes
    assert serial.backwards < folded.backwards


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.6), ("l1", 1.5)])
def test_early_stop_keeps_the_successes_with_fewer_passes(norm, eps, digits_model, digits_test_set):
    x, y = digits_test_set
    full = FAB(digits_model, eps=eps, norm=norm, steps=30, early_stop=False).run(x, y)
    early = FAB(digits_model, eps=eps, norm=norm, steps=30, early_stop=True).run(x, y)
    assert torch.equal(early.success, full.success) and early.success.any()
    assert early.backwards < full.backwards
    assert (sizes(early.x_adv - x, norm) <= eps * (1 + 1e-6)).all()
    with torch.no_grad():
        assert torch.equal(digits_model(early.x_adv).argmax(1) != y, early.success)
    # unbounded (the minimal perturbation): nothing stops early, the default is the full run
    free = FAB(digits_model, eps=math.inf, norm=norm, steps=5).run(x[:32], y[:32])
    assert torch.equal(free.x_adv, FAB(digits_model, eps=math.inf, norm=norm, steps=5, early_stop=False)(x[:32], y[:32]))


def test_restarts_start_at_random_points_and_never_lose(digits_model, digits_test_set):
    x, y = digits_test_set[0][:64], digits_test_set[1][:64]
    single = FAB(digits_model, eps=0.08, steps=10, seed=1).run(x, y)
    more = FAB(digits_model, eps=0.08, steps=10, restarts=3, seed=1).run(x, y)
    assert bool((single.success <= more.success).all())
    assert ((more.x_adv - x).abs().flatten(1).amax(1) <= 0.08 + 1e-6).all()


def test_beats_random_noise_and_misclassified_points_stay(digits_model, digits_test_set):
    x, y = digits_test_set
    result = FAB(digits_model, eps=0.8, norm="l2", steps=50).run(x, y)
    noise = torch.randn_like(x)
    noisy = (x + 0.8 * noise / noise.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)).clamp(0, 1)
    with torch.no_grad():
        clean_wrong = digits_model(x).argmax(1) != y
        noise_fooled = (digits_model(noisy).argmax(1) != y) & ~clean_wrong
    assert (result.success & ~clean_wrong).sum() > 2 * noise_fooled.sum() + 10
    assert torch.equal(result.x_adv[clean_wrong], x[clean_wrong])


def test_counts_functional_form_and_presets(digits_model, digits_test_set):
    x, y = digits_test_set[0][:16], digits_test_set[1][:16]
    attack = FAB(digits_model, eps=0.1, steps=3, targeted=True, n_target_classes=1, early_stop=False)
    result = attack.run(x, y)
    robust = int((digits_model(x).argmax(1) == y).sum())
    # the clean check, then per iteration one graph forward, one backward and one forward
    # for the decision, then the forward that evaluates the result
    assert result.forwards == 16 + robust * (3 * 2 + 1) and result.backwards == robust * 3
    torch.testing.assert_close(functional.fab(digits_model, x, y, eps=0.1, steps=3), FAB(digits_model, eps=0.1, steps=3)(x, y))
    fab_t = PRESETS["fab-t"].build(digits_model, 0.1)
    assert isinstance(fab_t, FAB) and fab_t.targeted and (fab_t.n_target_classes, fab_t.steps) == (9, 100)
    assert not PRESETS["fab"].build(digits_model, 0.5, norm="l1").targeted


def test_targets_need_a_targeted_attack_and_enough_classes(digits_model, digits_test_set):
    x, y = digits_test_set[0][:4], digits_test_set[1][:4]
    with pytest.raises(ValueError, match="targets: given to an untargeted FAB"):
        FAB(digits_model)(x, y, (y + 1) % 10)
    with pytest.raises(ValueError, match="n_target_classes must be at most classes - 1 = 9"):
        FAB(digits_model, targeted=True, n_target_classes=10)(x, y)


def _double(model):
    import copy
    return copy.deepcopy(model).double()
