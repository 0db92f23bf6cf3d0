"""The jsigr recipe (J-SIGR-style): its loss is CE + (lambda_j / 2) * jacobian_norm +
lambda_s * input_gradient_penalty with the chosen mask, reproducible from the step's generator;
options are checked. (Training on digits: tests/test_train_recipes.py.)"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastrobust.regularizers import input_gradient_penalty, jacobian_norm, top_gradient_mask
from fastrobust.train.recipes import StepContext, create_recipe


def ctx(seed=0):
    return StepContext(epoch=0, epochs=1, step=0, steps_per_epoch=1, generator=torch.Generator().manual_seed(seed))


def model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    return model, x, y


@pytest.mark.parametrize("mask", ["top", "none"])
def test_loss_is_the_sum_of_its_terms(mask):
    model, x, y = model_and_batch()
    out = create_recipe("jsigr", lambda_j=0.3, lambda_s=2.0, n_proj=2, mask=mask, q=0.25).batch_loss(model, x, y, ctx(7))
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    natural = F.cross_entropy(logits, y)
    jac = jacobian_norm(logits, xr, n_proj=2, generator=torch.Generator().manual_seed(7))
    penalty = input_gradient_penalty(F.cross_entropy(logits, y, reduction="sum"), xr,
                                     top_gradient_mask(0.25) if mask == "top" else None)
    torch.testing.assert_close(out.loss, natural + 0.15 * jac + 2.0 * penalty)
    assert out.extras["jacobian_norm"] > 0 and out.extras["gradient_penalty"] > 0
    torch.testing.assert_close(out.logits, logits.detach())


def test_loss_is_reproducible_from_the_generator():
    model, x, y = model_and_batch()
    recipe = create_recipe("jsigr")
    a, b, c = (recipe.batch_loss(model, x, y, ctx(s)).loss for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zero_weights_leave_the_cross_entropy():
    model, x, y = model_and_batch()
    out = create_recipe("jsigr", lambda_j=0.0, lambda_s=0.0).batch_loss(model, x, y, ctx())
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x), y))


def test_perturbation_mask_runs_in_eval_mode_and_restores_train_mode():
    model, x, y = model_and_batch()
    modes = []
    model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    model.train()
    create_recipe("jsigr", mask="perturbation", saliency_steps=2).batch_loss(model, x.reshape(5, 1, 4, 4), y, ctx())
    assert modes[:2] == [False, False] and modes[-1] is True and model.training


@pytest.mark.parametrize("options, message", [
    (dict(lambda_j=-1.0), "lambda_j"), (dict(lambda_s=float("nan")), "lambda_s"), (dict(n_proj=0), "n_proj"),
    (dict(mask="grad"), "mask must be one of"), (dict(q=0.0), "q must be > 0"), (dict(q=1.5), "q must be <= 1"),
    (dict(saliency_steps=0), "saliency_steps"),
])
def test_bad_options_name_themselves(options, message):
    with pytest.raises(ValueError, match=message):
        create_recipe("jsigr", **options)
