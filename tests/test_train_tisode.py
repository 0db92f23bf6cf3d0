"""The tisode recipe composed with another recipe (inner=...): PGD-AT of a TisODE net is the
PGD recipe's loss on the noise-augmented batch plus w * L_ss of the adversarial forward."""
import pytest
import torch

from fastrobust.models import create
from fastrobust.train.config import TrainConfig
from fastrobust.train.recipes import RECIPES, StepContext, create_recipe
from fastrobust.train.recipes.tisode import steady_state_loss
from fastrobust.train.trainer import _recipe_kwargs


def ctx(epoch, seed=0):
    return StepContext(epoch=epoch, epochs=10, step=0, steps_per_epoch=1, generator=torch.Generator().manual_seed(seed),
                       host_generator=torch.Generator().manual_seed(seed + 1))


@pytest.fixture
def ode_net():
    torch.manual_seed(0)
    return create("ode_net", width=8).train()


def test_pgd_inside_tisode_adds_the_adversarial_forwards_steady_state(ode_net):
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    recipe = create_recipe("tisode", eps=0.1, weight=0.5, ss_from_epoch=2, noise_probability=0.0, inner="pgd",
                           inner_options={"steps": 3})
    assert recipe.inner.name == "pgd" and recipe.inner.steps == 3 and recipe.inner.eps == 0.1
    for epoch, with_ss in ((1, False), (2, True)):
        out = recipe.batch_loss(ode_net, x, y, ctx(epoch))
        alone = create_recipe("pgd", eps=0.1, steps=3).batch_loss(ode_net, x, y, ctx(epoch))  # the same draws
        ss = steady_state_loss(ode_net, alone.loss)  # of the PGD recipe's train-mode forward on x_adv
        assert ss > 0
        torch.testing.assert_close(out.extras["loss_inner"], alone.loss.detach())
        torch.testing.assert_close(out.extras["steady_state"], ss.detach())
        torch.testing.assert_close(out.loss, alone.loss + 0.5 * ss if with_ss else alone.loss)
        assert out.logits is None and out.adv_logits is not None  # the inner recipe's outputs
    out.loss.backward()
    assert all(p.grad is not None for p in ode_net.block.parameters())


def test_tisode_passes_the_trainers_alpha_and_steps_to_the_inner_recipe():
    config = TrainConfig(recipe="tisode", eps=0.2, alpha=0.05, steps=4, recipe_options={"inner": "trades"})
    recipe = create_recipe("tisode", **_recipe_kwargs(RECIPES["tisode"], config))
    assert recipe.inner.name == "trades" and recipe.inner.steps == 4 and recipe.inner.alpha == 0.05
    assert recipe.options()["inner"] == "trades"


def test_tisode_state_and_schedule_are_the_inner_recipes():
    recipe = create_recipe("tisode", inner="fat")
    assert recipe.depends_on_total_epochs() == create_recipe("fat").depends_on_total_epochs()
    assert recipe.state_dict() == recipe.inner.state_dict()


@pytest.mark.parametrize("options, message", [
    (dict(inner="bogus"), "inner must name another recipe"),
    (dict(inner="tisode"), "inner must name another recipe"),
    (dict(inner="pgd", inner_options={"stepz": 3}), "inner_options: recipe 'pgd'"),
    (dict(inner="pgd", inner_options=[("steps", 3)]), "inner_options must be a dict"),
    (dict(inner="pgd", steps=3, inner_options={"steps": 3}), "steps is given twice"),
    (dict(steps=3), "inner_options: recipe 'standard'"),
])
def test_tisode_inner_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        create_recipe("tisode", **options)
