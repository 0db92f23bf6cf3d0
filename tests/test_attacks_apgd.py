"""APGD: checkpoint iterations from the rule, the checkpoint rule against AutoAttack's
bookkeeping (check_oscillation with its first-checkpoint quirk, reduced_last_check,
loss_best_last_check), and whole runs against the reference transcription."""
from fractions import Fraction

import pytest
import torch
from torch import nn

import fastrobust.reference.pgd as ref
from fastrobust import attacks
from fastrobust.attacks.apgd import APGDState, apgd_checkpoints
from fastrobust.attacks.rows import Rows

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")


def paper_checkpoints(n):
    """Croce & Hein's p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in
    iterations of n (with AutoAttack's integer rounding of 0.22n, 0.03n, 0.06n)."""
    first, shrink, shortest = (max(int(Fraction(f) * n), 1) for f in ("0.22", "0.03", "0.06"))
    points = [0, first]
    while True:
        nxt = points[-1] + max(points[-1] - points[-2] - shrink, shortest)
        if nxt > n:
            return points
        points.append(nxt)


def test_checkpoints_for_100_iterations():
    assert paper_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert [i + 1 for i, _ in apgd_checkpoints(100)] == paper_checkpoints(100)[1:]
    assert [k for _, k in apgd_checkpoints(100)] == [22, 19, 16, 13, 10, 7, 6, 6]


@pytest.mark.parametrize("n", [1, 5, 10, 37, 100, 250])
def test_checkpoints_match_the_rule_and_the_reference_loop(n, monkeypatch):
    assert [i + 1 for i, _ in apgd_checkpoints(n)] == paper_checkpoints(n)[1:]
    seen = []
    original = ref.check_oscillation

    def recording(loss_steps, j, k, k3=0.75):
        seen.append((j, k))
        return original(loss_steps, j, k, k3)

    monkeypatch.setattr(ref, "check_oscillation", recording)
    model, x, y = problem(n=3)
    ref.apgd_single_run(model, x, y, 0.1, n, "linf", "ce", generator=torch.Generator().manual_seed(0))
    assert seen == apgd_checkpoints(n)


def test_the_attack_checks_at_those_iterations(monkeypatch):
    iterations, checks = [0], []
    record, checkpoint = APGDState.record, APGDState.checkpoint

    def counting_record(self, *args):
        iterations[0] += 1
        return record(self, *args)

    def logging_checkpoint(self, interval, rho):
        checks.append((iterations[0] - 1, interval))
        return checkpoint(self, interval, rho)

    monkeypatch.setattr(APGDState, "record", counting_record)
    monkeypatch.setattr(APGDState, "checkpoint", logging_checkpoint)
    model, x, y = problem(n=4)
    attacks.APGD(model, eps=0.05, steps=100, seed=0)(x, y)
    assert checks == apgd_checkpoints(100)


def autoattack_decisions(losses, init_loss, n_iter, rho=0.75):
    """AutoAttack's step-size bookkeeping on a given loss history (n_iter, rows): the rows where
    each checkpoint halves the step size."""
    k, shrink, shortest = max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
    loss_steps = torch.zeros_like(losses)
    loss_best = init_loss.clone()
    loss_best_last_check, reduced_last_check = loss_best.clone(), torch.ones_like(loss_best)
    counter3, decisions = 0, []
    for i in range(n_iter):
        loss_steps[i] = losses[i]
        loss_best = torch.where(losses[i] > loss_best, losses[i], loss_best)
        counter3 += 1
        if counter3 == k:
            fl = ref.check_oscillation(loss_steps, i, k, k3=rho)
            fl = torch.max(fl, (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best).float())
            reduced_last_check, loss_best_last_check = fl.clone(), loss_best.clone()
            decisions.append(fl.bool())
            k, counter3 = max(k - shrink, shortest), 0
    return decisions


def synthetic_histories(n_iter, seed):
    """Loss histories that make both halving conditions fire: noisy, rising, flat (at, above
    and below 0: the first check compares the first loss with 0), rising then flat."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n_iter, dtype=torch.float64)
    return torch.stack([
        torch.randn(n_iter, generator=g, dtype=torch.float64),
        t * 0.1,
        torch.zeros(n_iter, dtype=torch.float64),
        torch.full((n_iter,), 2.0, dtype=torch.float64),
        torch.full((n_iter,), -1.0, dtype=torch.float64),
        torch.minimum(t, torch.tensor(30.0)),
        torch.randn(n_iter, generator=g, dtype=torch.float64).cumsum(0),
    ], dim=1)


@pytest.mark.parametrize("n_iter, seed", [(100, 0), (100, 1), (40, 2), (13, 3)])
def test_checkpoint_rule_matches_autoattack(n_iter, seed):
    losses = synthetic_histories(n_iter, seed)
    rows_n = losses.shape[1]
    init_loss = torch.full((rows_n,), -0.5, dtype=torch.float64)
    expected = autoattack_decisions(losses, init_loss, n_iter)

    x0 = torch.zeros(rows_n, 2, dtype=torch.float64)
    rows = Rows(x0=x0, y=torch.zeros(rows_n, dtype=torch.int64), targets=None,
                eps=torch.tensor([0.25], dtype=torch.float64), alpha=None, groups=1, first_group=0,
                goal="fooled", seed=0, generator=torch.Generator())
    no_adv = torch.zeros(rows_n, dtype=torch.bool)
    state = APGDState(rows, x0.clone(), init_loss, torch.zeros_like(x0), no_adv)
    checkpoints = dict(apgd_checkpoints(n_iter))
    eta = torch.full((rows_n,), 0.5, dtype=torch.float64)
    best_iteration = torch.full((rows_n,), -1.0, dtype=torch.float64)
    best_loss = init_loss.clone()
    decisions = []
    for i in range(n_iter):
        state.x.fill_(float(i))  # the iterate of iteration i, to see which one x_best holds
        state.record(losses[i], torch.full_like(x0, float(i)), no_adv)
        improved = losses[i] > best_loss
        best_loss = torch.where(improved, losses[i], best_loss)
        best_iteration = torch.where(improved, float(i), best_iteration)
        if i in checkpoints:
            fired = state.checkpoint(checkpoints[i], 0.75)
            decisions.append(fired)
            eta = torch.where(fired, eta / 2, eta)
            torch.testing.assert_close(state.eta, eta)
            # where it fired, the iterate and its gradient restart from the best point
            restart = torch.where(fired, best_iteration, float(i))
            torch.testing.assert_close(state.x[:, 0], torch.where(restart < 0, 0.0, restart))
            torch.testing.assert_close(state.grad[:, 0], torch.where(restart < 0, 0.0, restart))
    assert len(decisions) == len(expected)
    for ours, theirs in zip(decisions, expected):
        assert torch.equal(ours, theirs)
    assert any(d.any() for d in expected) and any((~d).any() for d in expected)


def problem(n=30, features=10, classes=6, seed=0):
    """A float64 linear model and inputs; labels are the clean predictions except for a few."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).double()
    with torch.no_grad():
        model[1].weight.copy_(2 * torch.randn(classes, features, generator=g, dtype=torch.float64))
        model[1].bias.copy_(torch.randn(classes, generator=g, dtype=torch.float64))
    x = torch.rand(n, features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[: max(n // 10, 1)] = (y[: max(n // 10, 1)] + 1) % classes
    return model, x, y


@pytest.mark.parametrize("norm, eps", [("linf", 0.06), ("l2", 0.15)])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_runs_match_the_reference(norm, eps, loss):
    model, x, y = problem()
    # every row to the end, as the reference (early_stop would return the first success)
    result = attacks.APGD(model, eps=eps, steps=25, norm=norm, loss=loss, seed=0, early_stop=False).run(x, y)
    reference = ref.apgd(model, x, y, eps, steps=25, norm=norm, loss=loss, seed=0)
    with torch.no_grad():
        fooled = model(reference).argmax(1) != y
    assert 3 < fooled.sum() < len(y) - 3
    assert torch.equal(result.success, fooled)
    # The same start (same seeded draws) and the same steps: the same last misclassified iterate.
    # L2 projections round differently (AutoAttack divides by ||delta|| + 1e-12); once the loss
    # plateaus, differences of 1e-11 can flip a "loss rose" comparison and move a point by ~1e-7.
    torch.testing.assert_close(result.x_adv[fooled], reference[fooled], rtol=0, atol=1e-7 if norm == "linf" else 1e-6)


def test_targeted_runs_match_the_reference():
    model, x, y = problem()
    kwargs = dict(steps=15, loss="dlr", targeted=True, n_target_classes=3, seed=0)
    result = attacks.APGD(model, eps=0.04, restart_batch=1, early_stop=False, **kwargs).run(x, y)
    reference = ref.apgd(model, x, y, 0.04, **kwargs)
    with torch.no_grad():
        fooled = model(reference).argmax(1) != y
    assert 0 < fooled.sum() < len(y)
    assert torch.equal(result.success, fooled)
    # one target class per pass on the samples still robust, as AutoAttack: the same draws
    torch.testing.assert_close(result.x_adv[fooled], reference[fooled], rtol=0, atol=1e-7)


def test_momentum_one_on_the_first_step_then_momentum(monkeypatch):
    import fastrobust.attacks.apgd as apgd_module
    used = []
    original = apgd_module.apgd_step_

    def recording(*args, momentum, **kwargs):
        used.append(momentum)
        return original(*args, momentum=momentum, **kwargs)

    monkeypatch.setattr(apgd_module, "apgd_step_", recording)
    model, x, y = problem(n=4)
    attacks.APGD(model, eps=0.05, steps=5, momentum=0.6, seed=0)(x, y)
    assert used == [1.0, 0.6, 0.6, 0.6, 0.6]


@pytest.mark.parametrize("kwargs", [dict(loss="ce"), dict(loss="dlr", norm="l2"),
                                    dict(loss="dlr", targeted=True, n_target_classes=3)])
def test_early_stop_keeps_the_successes_with_fewer_passes(kwargs, digits_model, digits_test_set):
    """Rows leave at their first successful iterate: the same rows succeed as when every row
    runs to the end, the returned points are adversarial, and fewer passes are spent."""
    x, y = digits_test_set
    eps = 0.4 if kwargs.get("norm") == "l2" else 0.1
    full = attacks.APGD(digits_model, eps=eps, steps=30, seed=0, early_stop=False, **kwargs).run(x, y)
    early = attacks.APGD(digits_model, eps=eps, steps=30, seed=0, early_stop=True, **kwargs).run(x, y)
    assert torch.equal(early.success, full.success) and early.success.any()
    with torch.no_grad():
        assert torch.equal(digits_model(early.x_adv).argmax(1) != y, early.success)
    assert early.backwards < full.backwards
    # the default on the CPU
    auto = attacks.APGD(digits_model, eps=eps, steps=30, seed=0, **kwargs).run(x, y)
    assert auto.backwards == early.backwards and torch.equal(auto.x_adv, early.x_adv)
