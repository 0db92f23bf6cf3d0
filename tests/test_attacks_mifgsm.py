"""MI-FGSM (fastrobust.attacks.MIFGSM) against its eager oracle, its relation to PGD, the L2
variant, and LogitEnsemble (fastrobust.models)."""
import pytest
import torch
from torch import nn

from fastrobust.attacks import MIFGSM, PGD
from fastrobust.models import LogitEnsemble
from fastrobust.reference.mifgsm import mifgsm as reference_mifgsm


def tiny(seed=0, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, classes)).double().eval()


def batch(n=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 2, 2, generator=gen, dtype=torch.float64), torch.randint(0, 4, (n,), generator=gen)


@pytest.mark.parametrize("momentum", [1.0, 0.5])
def test_matches_the_eager_oracle(momentum):
    model, (x, y) = tiny(), batch()
    got = MIFGSM(model, eps=0.1, steps=7, momentum=momentum)(x, y)
    want = reference_mifgsm(model, x, y, eps=0.1, alpha=0.1 / 7, steps=7, momentum=momentum)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert (got - x).abs().max() <= 0.1 + 1e-12 and not torch.equal(got, x)


def test_without_momentum_it_is_pgd_from_x():
    """momentum 0: sign(grad / mean|grad|) = sign(grad), the step of PGD without random start."""
    model, (x, y) = tiny(), batch()
    mi = MIFGSM(model, eps=0.1, steps=5, alpha=0.03, momentum=0.0)(x, y)
    pgd = PGD(model, eps=0.1, alpha=0.03, steps=5, random_start=False, keep="last")(x, y)
    torch.testing.assert_close(mi, pgd, rtol=0, atol=0)


def test_function_form_and_targeted_mode():
    from fastrobust.attacks import functional

    model, (x, y) = tiny(), batch()
    torch.testing.assert_close(functional.mifgsm(model, x, y, eps=0.1, steps=3), MIFGSM(model, eps=0.1, steps=3)(x, y))
    targets = (y + 1) % 4
    result = MIFGSM(model, eps=0.5, steps=10, targeted=True).run(x, y, targets)
    assert result.success.any() and torch.equal(model(result.x_adv).argmax(1)[result.success], targets[result.success])


def test_momentum_changes_the_path():
    model, (x, y) = tiny(), batch()
    a = MIFGSM(model, eps=0.2, steps=8, momentum=1.0)(x, y)
    b = MIFGSM(model, eps=0.2, steps=8, momentum=0.0)(x, y)
    assert not torch.equal(a, b)


def test_l2_stays_in_its_ball_and_lowers_accuracy():
    model, (x, y) = tiny(), batch(64)
    y = model(x).argmax(1)  # the official code attacks the model's own prediction
    x_adv = MIFGSM(model, eps=1.0, steps=10, norm="l2")(x, y)
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 1.0 + 1e-9).all()
    assert (model(x_adv).argmax(1) == y).float().mean() < 1.0


def test_defaults_are_the_official_scripts():
    attack = MIFGSM(tiny())
    assert (attack.eps, attack.steps, attack.alpha, attack.momentum) == (16 / 255, 10, 16 / 255 / 10, 1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(momentum=-0.1), "momentum must be a finite number >= 0"),
    (dict(momentum=float("inf")), "momentum must be a finite number >= 0"),
    (dict(steps=0), "steps"),
    (dict(alpha=-1.0), "alpha"),
    (dict(norm="l1"), "norm"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MIFGSM(tiny(), **kwargs)


def test_logit_ensemble_averages_with_weights():
    a, b = tiny(0), tiny(1)

    class Pair(nn.Module):  # a model returning (logits, extras)
        def __init__(self):
            super().__init__()
            self.inner = b

        def forward(self, x):
            return self.inner(x), None

    x, _ = batch()
    ens = LogitEnsemble([a, Pair()], weights=[3.0, 1.0])
    torch.testing.assert_close(ens(x), (3 * a(x) + b(x)) / 4)
    torch.testing.assert_close(LogitEnsemble([a, b])(x), (a(x) + b(x)) / 2)
    assert len(list(ens.parameters())) == len(list(a.parameters())) + len(list(b.parameters()))


@pytest.mark.parametrize("models, weights, message", [
    ([], None, "non-empty sequence"),
    ([nn.Identity()], [1.0, 2.0], "one value per model"),
    ([nn.Identity()], [-1.0], "finite numbers >= 0"),
    ([nn.Identity(), nn.Identity()], [0.0, 0.0], "positive sum"),
])
def test_logit_ensemble_rejects_bad_arguments(models, weights, message):
    with pytest.raises(ValueError, match=message):
        LogitEnsemble(models, weights)
