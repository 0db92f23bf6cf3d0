"""AutoAttack in one call: the suites of fastrobust.eval.presets (their attacks, order and
budgets), the cascade they run (each attack only on the points still robust, the per-point
worst case), APGD's EOT for the "rand" version, and the CLI's --attacks."""
import argparse

import pytest
import torch

from fastrobust.attacks import APGD, FAB, Square
from fastrobust.cli.common import attack_list
from fastrobust.eval import evaluate
from fastrobust.eval.presets import SUITES, expand_suites


def test_standard_suite_is_autoattacks_standard_version(digits_model):
    presets = expand_suites(["autoattack-standard"])
    assert [p.name for p in presets] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    built = [p.build(digits_model, 8 / 255) for p in presets]
    ce, apgd_t, fab_t, square = built
    assert isinstance(ce, APGD) and (ce.loss, ce.steps, ce.restarts, ce.targeted) == ("ce", 100, 1, False)
    assert isinstance(apgd_t, APGD) and apgd_t.targeted and (apgd_t.loss, apgd_t.n_target_classes, apgd_t.steps,
                                                             apgd_t.restarts) == ("dlr", 9, 100, 1)
    assert isinstance(fab_t, FAB) and fab_t.targeted and (fab_t.n_target_classes, fab_t.steps, fab_t.restarts) == (9, 100, 1)
    assert isinstance(square, Square) and (square.queries, square.p_init, square.loss) == (5000, 0.8, "margin")
    assert all(a.eps == 8 / 255 for a in built)


def test_plus_and_rand_suites():
    plus = expand_suites(["autoattack-plus"])
    assert [p.name for p in plus] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert [p.params.get("restarts") for p in plus[:3]] == [5, 5, 5]
    rand = expand_suites(["autoattack-rand"])
    assert [(p.name, p.params["eot_iter"]) for p in rand] == [("apgd-ce", 20), ("apgd-dlr", 20)]
    # names that are not suites pass through, in order
    assert [getattr(p, "name", p) for p in expand_suites(["pgd20", "autoattack-rand"])] == ["pgd20", "apgd-ce", "apgd-dlr"]
    assert set(SUITES) == {"autoattack-standard", "autoattack-plus", "autoattack-rand"}


def test_standard_cascade_attacks_only_the_points_still_robust(digits_model, digits_test_set):
    x, y = digits_test_set[0][:48], digits_test_set[1][:48]
    report = evaluate(digits_model, (x, y), ["autoattack-standard"], eps=0.15, seed=0)
    assert [a.name for a in report.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    with torch.no_grad():
        robust = digits_model(x).argmax(1) == y
    broken_any = torch.zeros(48, dtype=torch.bool)
    for row in report.attacks:
        assert row.points_attacked == int(robust.sum())  # only the points the earlier attacks left
        assert not bool((row.success & ~robust).any())
        robust &= ~row.success
        broken_any |= row.success
        assert row.robust_accuracy == pytest.approx(float(robust.float().mean()))
    assert report.robust_accuracy == pytest.approx(float(robust.float().mean()))
    assert report.attacks[0].successes > 0  # the budget reached the model: APGD-CE broke points
    assert report.attacks[1].params["n_target_classes"] == 9 and report.attacks[3].params["queries"] == 5000


def test_apgd_eot_averages_gradients_over_passes(digits_model, digits_test_set):
    """On a deterministic model the mean of identical gradients is the gradient: the same
    attack (up to rounding), eot_iter times the passes."""
    x, y = digits_test_set[0][:32], digits_test_set[1][:32]
    one = APGD(digits_model, eps=0.1, steps=10, seed=0, early_stop=False).run(x, y)
    three = APGD(digits_model, eps=0.1, steps=10, seed=0, eot_iter=3, early_stop=False).run(x, y)
    assert torch.equal(one.success, three.success)
    torch.testing.assert_close(one.x_adv, three.x_adv, atol=1e-6, rtol=0)
    robust = int((digits_model(x).argmax(1) == y).sum())
    assert one.backwards == robust * 11 and three.backwards == 3 * one.backwards


def test_apgd_eot_on_a_randomised_model_reads_several_draws(digits_model, digits_test_set):
    """A model with input noise: every EOT pass calls the model again (a new draw)."""
    class Noisy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            self.calls += 1
            return self.inner(x + 0.05 * torch.randn_like(x))

    x, y = digits_test_set[0][:32], digits_test_set[1][:32]
    model = Noisy(digits_model)
    before = model.calls
    APGD(model, eps=0.1, steps=5, seed=0, eot_iter=4, early_stop=False).run(x, y)
    assert model.calls - before == 1 + 4 * 6  # the clean check, then 4 passes at the start and per step


def test_cli_accepts_suites_and_names_bad_ones():
    assert attack_list("autoattack-standard") == ("autoattack-standard",)
    assert attack_list("pgd20,autoattack-rand") == ("pgd20", "autoattack-rand")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown attack 'autoattack-fast'.*autoattack-standard"):
        attack_list("autoattack-fast")


def test_standard_suite_in_l1_uses_autoattacks_l1_budgets(digits_model, digits_test_set):
    """AutoAttack's L1 standard version: APGD-CE with 5 restarts and APGD-T with 5 target
    classes, both on the 3 eps / 2 eps / eps schedule; FAB-T and Square in L1."""
    ce, apgd_t, fab_t, square = [p.build(digits_model, 2.0, norm="l1") for p in
                                 expand_suites(["autoattack-standard"], norm="l1")]
    assert (ce.norm, ce.restarts, ce.eps_schedule) == ("l1", 5, True)
    assert (apgd_t.n_target_classes, apgd_t.eps_schedule, apgd_t.restarts) == (5, True, 1)
    assert fab_t.norm == "l1" and square.norm == "l1"
    assert expand_suites(["autoattack-standard"])[0].params["restarts"] == 1  # L-inf: unchanged
    x, y = digits_test_set[0][:24], digits_test_set[1][:24]
    report = evaluate(digits_model, (x, y), ["autoattack-standard"], eps=1.0, norm="l1", seed=0,
                      keep_adversarial=True)
    assert [a.name for a in report.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (report.x_adv - x).abs().flatten(1).sum(1).max() <= 1.0 + 1e-5
    with pytest.raises(ValueError, match="supports linf, l2 only"):
        evaluate(digits_model, (x, y), ["cw"], eps=1.0, norm="l1")


@pytest.mark.parametrize("cascade", [True, False])
def test_keep_adversarial_returns_the_points_that_broke_the_model(digits_model, digits_test_set, cascade):
    x, y = digits_test_set[0][:48], digits_test_set[1][:48]
    report = evaluate(digits_model, (x, y), ["pgd20", "apgd-ce"], eps=0.15, seed=0, cascade=cascade,
                      keep_adversarial=True)
    assert report.x_adv.shape == x.shape and ((report.x_adv - x).abs().amax() <= 0.15 + 1e-6)
    with torch.no_grad():
        wrong = digits_model(report.x_adv).argmax(1) != y
    broken = report.clean_correct & ~report.robust
    assert broken.any() and bool((wrong[broken]).all())
    assert torch.equal(report.x_adv[report.robust], x[report.robust])
    assert evaluate(digits_model, (x[:4], y[:4]), ["pgd20"], eps=0.15).x_adv is None
