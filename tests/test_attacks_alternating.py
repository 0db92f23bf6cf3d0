"""AlternatingPGD: the loss used at every step follows the official staged schedule, the
iterates match the reference's, and the random start is a vertex of the L-inf ball."""
import pytest
import torch
from torch import nn

import fastrobust.attacks.rows as rows_module
from fastrobust import attacks
from fastrobust.reference import pgd as ref

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")


def linear_model(features=8, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).double()
    with torch.no_grad():
        model[1].weight.copy_(2 * torch.randn(classes, features, generator=g, dtype=torch.float64))
        model[1].bias.copy_(torch.randn(classes, generator=g, dtype=torch.float64))
    return model


def data(n=12, features=8, classes=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, features, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


@pytest.fixture
def losses_used(monkeypatch):
    """The loss kind of every loss evaluation the attack rows make, in order."""
    used = []
    original = rows_module.objective

    def recording(kind, *args, **kwargs):
        used.append(kind)
        return original(kind, *args, **kwargs)

    monkeypatch.setattr(rows_module, "objective", recording)
    return used


# The official configs (code/utils/configs.py, T=100): timesteps [50, 100] and [33, 66, 100].
@pytest.mark.parametrize("schedule, steps, expected", [
    (("ce", "cw"), 100, ["ce"] * 50 + ["cw"] * 50),
    (("cw", "ce"), 100, ["cw"] * 50 + ["ce"] * 50),
    (("ce", "dlr"), 100, ["ce"] * 50 + ["dlr"] * 50),
    (("ce", "cw", "dlr"), 100, ["ce"] * 33 + ["cw"] * 33 + ["dlr"] * 34),
    (("ce", "dlr", "cw"), 100, ["ce"] * 33 + ["dlr"] * 33 + ["cw"] * 34),
    (("dlr", "cw"), 10, ["dlr"] * 5 + ["cw"] * 5),
    (("ce", "cw", "dlr"), 7, ["ce"] * 2 + ["cw"] * 2 + ["dlr"] * 3),
    (("cw",), 4, ["cw"] * 4),
    (("ce", "cw", "dlr"), 2, ["ce", "cw"]),
])
def test_loss_of_every_step_follows_the_schedule(losses_used, schedule, steps, expected):
    x, y = data()
    attacks.AlternatingPGD(linear_model(), eps=0.1, steps=steps, schedule=schedule)(x, y)
    # one gradient evaluation per step, then the last iterate is evaluated with the last stage's loss
    assert losses_used == expected + [expected[-1]]
    assert [schedule[ref.alternating_stage(t, steps, len(schedule))] for t in range(steps)] == expected


@pytest.mark.parametrize("schedule", [("ce", "cw"), ("cw", "dlr"), ("ce", "cw", "dlr")])
def test_iterates_match_the_reference(schedule):
    model, (x, _) = linear_model(), data(n=40)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correct at the start
    result = attacks.AlternatingPGD(model, eps=0.05, steps=30, schedule=schedule).run(x, y)
    reference = ref.alternating_pgd(model, x, y, 0.05, steps=30, schedule=schedule)
    with torch.no_grad():
        fooled_ref = model(reference).argmax(1) != y
    assert 0 < fooled_ref.sum() < 40
    assert torch.equal(result.success, fooled_ref)
    # Both keep the last misclassified iterate. Where DLR is flat (equal to 1 while y ranks
    # third) the fused backward's gradient is exactly 0, as autograd's, so sign(g) agrees too.
    same = (result.x_adv - reference)[fooled_ref].abs().amax(1) <= 1e-9
    assert same.all()


def test_reported_loss_is_the_cw_margin_at_x_adv():
    model, (x, y) = linear_model(), data()
    result = attacks.AlternatingPGD(model, eps=0.1, steps=6, schedule=("dlr", "ce")).run(x, y)
    with torch.no_grad():
        z = model(result.x_adv)
    others = z.scatter(1, y[:, None], -float("inf")).amax(1)
    torch.testing.assert_close(result.loss, others - z.gather(1, y[:, None])[:, 0])


def test_random_start_is_a_vertex_of_the_linf_ball():
    x = torch.full((4, 8), 0.5, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.int64)
    start = attacks.AlternatingPGD(linear_model(), eps=0.1, steps=0, random_start=True, seed=0)(x, y)
    torch.testing.assert_close((start - x).abs(), torch.full_like(x, 0.1))
    assert 0.2 < ((start - x) > 0).double().mean() < 0.8


def test_default_step_is_a_quarter_of_eps():
    attack = attacks.AlternatingPGD(linear_model(), eps=0.2)
    assert attack.alpha == pytest.approx(0.05) and attack.steps == 100 and attack.schedule == ("ce", "cw")
