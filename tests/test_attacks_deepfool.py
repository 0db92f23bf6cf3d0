"""DeepFool (fastrobust.attacks.DeepFool): the exact boundary point of a linear model, the
sample-by-sample reference on a trained CNN, the eps projection, counts and bad arguments."""
import math

import pytest
import torch

from fastrobust.attacks import DeepFool, functional
from fastrobust.eval.presets import PRESETS
from fastrobust.reference.deepfool import deepfool as reference_deepfool
from linear_problem import boundary_distances, linear_problem

DUAL = {"l2": 2, "linf": 1}


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_finds_the_nearest_boundary_of_a_linear_model(norm):
    """For f(x) = W x + b the distance to the nearest boundary is min_k |f_k - f_y| /
    ||w_k - w_y||_dual (dual: 2 for L2, 1 for L-inf); DeepFool reaches it in one step, times
    1 + overshoot (plus the 1e-4 it adds to land past the boundary)."""
    model, x, y = linear_problem()
    result = DeepFool(model, norm=norm).run(x, y)
    assert result.success.all()
    delta = (result.x_adv - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)
    exact = boundary_distances(model, x, y, DUAL[norm])
    ratio = size / exact
    assert (ratio >= 1.02 - 1e-9).all() and (ratio <= 1.021).all(), (ratio.min(), ratio.max())
    # one step, then the forward that sees the label changed: no gradient taken there
    assert result.forwards == 64 * 4 and result.backwards == 64 * 5


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_matches_the_reference_on_a_cnn(norm, digits_model, digits_test_set):
    """The batched attack and the sample-by-sample reference take the same steps (the
    reference in float64, so the points agree to float32 rounding)."""
    x, y = digits_test_set[0][:40], digits_test_set[1][:40]
    ours = DeepFool(digits_model, norm=norm, steps=20).run(x, y)
    theirs = reference_deepfool(digits_model, x, y, norm, steps=20)
    with torch.no_grad():
        fooled = digits_model(theirs).argmax(1) != y
    assert torch.equal(ours.success, fooled)
    torch.testing.assert_close(ours.x_adv, theirs, atol=2e-4, rtol=0)


def test_minimal_perturbations_are_small_and_eps_projects(digits_model, digits_test_set):
    x, y = digits_test_set
    free = DeepFool(digits_model, norm="l2").run(x, y)
    assert free.success.float().mean() > 0.95  # unbounded: nearly every point is fooled
    sizes = (free.x_adv - x).flatten(1).norm(dim=1)
    bounded = DeepFool(digits_model, norm="l2", eps=0.5).run(x, y)
    kept = (bounded.x_adv - x).flatten(1).norm(dim=1)
    assert (kept <= 0.5 + 1e-5).all()
    torch.testing.assert_close(bounded.x_adv[sizes <= 0.5], free.x_adv[sizes <= 0.5])
    assert bool((bounded.success <= free.success).all())
    linf = DeepFool(digits_model, norm="linf", eps=0.1).run(x, y)
    assert ((linf.x_adv - x).abs().flatten(1).amax(1) <= 0.1 + 1e-6).all()
    assert linf.x_adv.min() >= 0 and linf.x_adv.max() <= 1


def test_misclassified_points_stay_and_steps_zero_is_the_clean_point(digits_model, digits_test_set):
    x, y = digits_test_set
    wrong = digits_model(x).argmax(1) != y
    result = DeepFool(digits_model).run(x, y)
    assert torch.equal(result.x_adv[wrong], x[wrong])
    none = DeepFool(digits_model, steps=0).run(x, y)
    assert torch.equal(none.x_adv, x) and none.backwards == 0


def test_functional_form_and_preset(digits_model, digits_test_set):
    x, y = digits_test_set[0][:8], digits_test_set[1][:8]
    torch.testing.assert_close(functional.deepfool(digits_model, x, y, steps=5), DeepFool(digits_model, steps=5)(x, y))
    attack = PRESETS["deepfool"].build(digits_model, 0.1)
    assert isinstance(attack, DeepFool) and (attack.steps, attack.overshoot, attack.candidates) == (50, 0.02, 10)
    assert attack.eps == 0.1 and attack.norm == "linf"


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": -1}, "steps must be an integer >= 0"),
    ({"overshoot": -0.1}, "overshoot must be a finite number >= 0"),
    ({"overshoot": math.inf}, "overshoot must be a finite number >= 0"),
    ({"candidates": 1}, "candidates must be an integer >= 2"),
    ({"cuda_graph": True}, "cuda_graph: DeepFool"),
])
def test_bad_arguments_name_the_argument(kwargs, message, digits_model):
    with pytest.raises(ValueError, match=message):
        DeepFool(digits_model, **kwargs)


def test_is_untargeted(digits_model, digits_test_set):
    x, y = digits_test_set[0][:4], digits_test_set[1][:4]
    with pytest.raises(ValueError, match="targets: DeepFool is untargeted"):
        DeepFool(digits_model)(x, y, (y + 1) % 10)
