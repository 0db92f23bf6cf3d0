"""Carlini-Wagner L2 (fastrobust.attacks.CarliniWagnerL2): the minimal L2 perturbation of a
linear model, a trained CNN (untargeted, targeted, kappa), the eps projection, counts and bad
arguments."""
import math

import pytest
import torch

from fastrobust.attacks import CarliniWagnerL2, DeepFool, functional
from fastrobust.eval.presets import PRESETS
from test_attacks_deepfool import linear_problem


def test_finds_the_minimal_l2_perturbation_of_a_linear_model():
    """Any adversarial point of f(x) = W x + b is at least min_k |f_k - f_y| / ||w_k - w_y||_2
    away; CW's smallest success is within 1 % of that bound."""
    model, x, y = linear_problem()
    result = CarliniWagnerL2(model, steps=200, initial_const=1.0).run(x, y)
    assert result.success.all()
    w, b = model[1].weight.detach(), model[1].bias.detach()
    f = x.flatten(1) @ w.t() + b
    exact = torch.tensor([min(abs(float(f[i, k] - f[i, y[i]])) / float((w[k] - w[y[i]]).norm())
                              for k in range(5) if k != y[i]) for i in range(64)], dtype=torch.float64)
    ratio = (result.x_adv - x).flatten(1).norm(dim=1) / exact
    assert (ratio >= 1 - 1e-6).all() and (ratio <= 1.01).all(), (ratio.min(), ratio.max())


def test_on_a_cnn_untargeted_and_no_larger_than_deepfool(digits_model, digits_test_set):
    x, y = digits_test_set[0][:48], digits_test_set[1][:48]
    result = CarliniWagnerL2(digits_model, steps=200, binary_search_steps=6, initial_const=1.0, lr=0.05).run(x, y)
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.success.float().mean() > 0.9
    assert result.backwards > 0 and result.forwards > result.backwards
    both = result.success & DeepFool(digits_model).run(x, y).success
    cw = (result.x_adv - x).flatten(1).norm(dim=1)[both]
    deepfool = (DeepFool(digits_model)(x, y) - x).flatten(1).norm(dim=1)[both]
    # an optimisation for the smallest perturbation against one step to a linearised boundary
    assert cw.median() <= 1.05 * deepfool.median(), (cw.median(), deepfool.median())


def test_targeted_and_kappa(digits_model, digits_test_set):
    x, y = digits_test_set[0][:32], digits_test_set[1][:32]
    targets = (y + 3) % 10
    result = CarliniWagnerL2(digits_model, steps=200, binary_search_steps=6, initial_const=1.0, lr=0.05, targeted=True,
                             kappa=1.0).run(x, y, targets)
    with torch.no_grad():
        logits = digits_model(result.x_adv)
    reached = result.success
    assert reached.float().mean() > 0.8
    assert torch.equal(logits.argmax(1)[reached], targets[reached])
    # kappa: the target wins by at least 1 where the attack succeeded
    own = logits.gather(1, targets[:, None])[:, 0]
    others = logits.scatter(1, targets[:, None], -math.inf).amax(1)
    assert (own - others)[reached].min() >= 1.0 - 1e-4


def test_eps_projects_and_misclassified_points_stay(digits_model, digits_test_set):
    x, y = digits_test_set
    wrong = digits_model(x).argmax(1) != y
    result = CarliniWagnerL2(digits_model, eps=0.3, steps=30, binary_search_steps=3).run(x, y)
    assert ((result.x_adv - x).flatten(1).norm(dim=1) <= 0.3 + 1e-5).all()
    assert torch.equal(result.x_adv[wrong], x[wrong])


def test_functional_form_and_preset(digits_model, digits_test_set):
    x, y = digits_test_set[0][:8], digits_test_set[1][:8]
    torch.testing.assert_close(functional.cw_l2(digits_model, x, y, steps=10, binary_search_steps=2),
                               CarliniWagnerL2(digits_model, steps=10, binary_search_steps=2)(x, y))
    attack = PRESETS["cw-l2"].build(digits_model, 0.5, norm="l2")
    assert isinstance(attack, CarliniWagnerL2)
    assert (attack.steps, attack.binary_search_steps, attack.lr, attack.initial_const) == (1000, 9, 0.01, 1e-3)
    with pytest.raises(ValueError, match="norm: the attack preset 'cw-l2' supports l2 only"):
        PRESETS["cw-l2"].build(digits_model, 0.1)  # the presets' default norm is linf


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": -1}, "steps must be an integer >= 0"),
    ({"binary_search_steps": 0}, "binary_search_steps must be an integer >= 1"),
    ({"lr": 0.0}, "lr must be a finite number > 0"),
    ({"initial_const": math.inf}, "initial_const must be a finite number > 0"),
    ({"kappa": -1.0}, "kappa must be a finite number >= 0"),
    ({"norm": "linf"}, "norm: CarliniWagnerL2 is an L2 attack"),
    ({"cuda_graph": True}, "cuda_graph: CarliniWagnerL2"),
])
def test_bad_arguments_name_the_argument(kwargs, message, digits_model):
    with pytest.raises(ValueError, match=message):
        CarliniWagnerL2(digits_model, **kwargs)


def test_targets_must_match_the_mode(digits_model, digits_test_set):
    x, y = digits_test_set[0][:4], digits_test_set[1][:4]
    with pytest.raises(ValueError, match="targets: a targeted CarliniWagnerL2 needs targets"):
        CarliniWagnerL2(digits_model, targeted=True)(x, y)
    with pytest.raises(ValueError, match="targets: given to an untargeted CarliniWagnerL2"):
        CarliniWagnerL2(digits_model)(x, y, (y + 1) % 10)
