"""The attack engine's policy for non-finite losses: a point whose loss is NaN or +-inf is
never the kept point and never a success; AttackResult says which samples met one. Also the
labels of an attack call are checked against the model's classes."""
import math

import pytest
import torch
from torch import nn

import fastrobust
from fastrobust import attacks
from fastrobust.testing import backends

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("mode", ["loss", "first_success", "last_success"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_best_never_takes_a_nonfinite_loss(backend, mode, dtype):
    dev = backend.device
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    best_x = torch.zeros(5, 3, dtype=dtype, device=dev)
    best_loss = torch.tensor([0.0, 0.0, -math.inf, 0.0, 0.0], dtype=acc, device=dev)
    success = torch.zeros(5, dtype=torch.bool, device=dev)
    nonfinite = torch.tensor([False, False, False, False, True], device=dev)
    x = torch.ones(5, 3, dtype=dtype, device=dev)
    loss = torch.tensor([math.nan, math.inf, -math.inf, 1.0, 2.0], dtype=acc, device=dev)
    is_adv = torch.ones(5, dtype=torch.bool, device=dev)
    backend.op("pgd_update_best_")(best_x, best_loss, success, x, loss, is_adv, mode, nonfinite)
    assert best_x[:, 0].cpu().tolist() == [0, 0, 0, 1, 1]
    assert best_loss.cpu().tolist() == [0.0, 0.0, -math.inf, 1.0, 2.0]
    assert success.cpu().tolist() == [False, False, False, True, True]
    assert nonfinite.cpu().tolist() == [True, True, True, False, True]  # |=: row 4 stays set


def test_update_best_reference_follows_the_same_policy():
    from fastrobust.reference import pgd_step as ref

    best_x, x = torch.zeros(3, 2), torch.ones(3, 2)
    best_loss, success = torch.zeros(3), torch.zeros(3, dtype=torch.bool)
    nonfinite = torch.zeros(3, dtype=torch.bool)
    ref.pgd_update_best_(best_x, best_loss, success, x, torch.tensor([math.nan, math.inf, 1.0]),
                         torch.ones(3, dtype=torch.bool), "first_success", nonfinite)
    assert best_x[:, 0].tolist() == [0, 0, 1] and success.tolist() == [False, False, True]
    assert nonfinite.tolist() == [True, True, False]


class NanWhere(nn.Module):
    """A linear classifier on 4 features whose logits are NaN where feature 0 exceeds `edge`
    (a model that breaks down in part of the input box)."""

    def __init__(self, edge=0.55):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.linear = nn.Linear(4, 3).double()
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.edge = edge

    def forward(self, x):
        z = self.linear(x.flatten(1))
        return torch.where(x.flatten(1)[:, :1] > self.edge, torch.full_like(z, math.nan), z)


def flaky_inputs():
    # sample 0 starts inside the NaN region (every iterate there has NaN logits); samples 1, 2
    # start below the edge and can step over it; sample 3 is far from it.
    x = torch.tensor([[0.9, 0.5, 0.5, 0.5], [0.5, 0.2, 0.8, 0.4], [0.52, 0.6, 0.1, 0.9], [0.1, 0.3, 0.3, 0.3]],
                     dtype=torch.float64)
    return x, torch.tensor([0, 1, 2, 1])


ATTACKS = {
    "pgd-success": lambda m: attacks.PGD(m, eps=0.2, alpha=0.05, steps=10, keep="success", seed=0),
    "pgd-loss": lambda m: attacks.PGD(m, eps=0.2, alpha=0.05, steps=10, keep="loss", seed=0, restarts=3),
    "pgd-last": lambda m: attacks.PGD(m, eps=0.2, alpha=0.05, steps=10, keep="last", seed=0),
    "apgd-ce": lambda m: attacks.APGD(m, eps=0.2, steps=10, seed=0),
    "apgd-dlr": lambda m: attacks.APGD(m, eps=0.2, steps=10, loss="dlr", seed=0, restarts=2),
    "fat": lambda m: attacks.FATPGD(m, eps=0.2, alpha=0.05, steps=10, seed=0),
    "mifgsm": lambda m: attacks.MIFGSM(m, eps=0.2, steps=10, seed=0),
    "mifgsm-success": lambda m: attacks.MIFGSM(m, eps=0.2, steps=10, keep="success", seed=0),
}


LAST_ITERATE = ("pgd-last", "fat", "mifgsm")  # these return the final iterate, whatever its loss


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_never_keep_a_nonfinite_point(name):
    model = NanWhere()
    x, y = flaky_inputs()
    result = ATTACKS[name](model).run(x, y)
    logits = model(result.x_adv)
    finite = torch.isfinite(logits).all(dim=1)
    assert result.nonfinite is not None and result.nonfinite.dtype == torch.bool
    assert bool(result.nonfinite[0]) and not bool(result.nonfinite[3])
    assert result.nonfinite_count == int(result.nonfinite.sum()) >= 1
    assert torch.equal(result.success, (logits.argmax(1) != y) & finite)  # a NaN output is never a success
    if name in LAST_ITERATE:
        assert torch.equal(torch.isnan(result.loss), ~finite)
        return
    # best-point attacks keep a point with finite logits, or (no such iterate) the clean input
    # with loss -inf: sample 0 starts 0.35 inside the NaN region, with eps 0.2 it never leaves
    assert not torch.isnan(result.loss).any()
    assert torch.equal(result.x_adv[0], x[0]) and result.loss[0] == -math.inf and not result.success[0]
    kept = result.loss > -math.inf
    assert finite[kept].all()
    assert torch.equal(result.x_adv[~kept], x[~kept])


def test_labels_outside_the_models_classes_are_an_error():
    """Labels out of range once surfaced from inside cross_entropy ('Target 7 is out of bounds')."""
    model = NanWhere(edge=2.0)
    x, _ = flaky_inputs()
    with pytest.raises(ValueError, match=r"y \(or targets\) must be class indices in \[0, 3\).*got the label 7"):
        attacks.PGD(model, eps=0.1, alpha=0.05, steps=2).run(x, torch.tensor([0, 1, 7, 2]))
    with pytest.raises(ValueError, match=r"y must be class indices >= 0, got -1"):
        attacks.APGD(model, eps=0.1, steps=2)(x, torch.tensor([0, -1, 2, 2]))
    with pytest.raises(ValueError, match=r"targets must be class indices >= 0"):
        attacks.PGD(model, eps=0.1, alpha=0.05, steps=2)(x, torch.tensor([0, 1, 2, 2]), torch.tensor([1, -3, 0, 0]))


def test_evaluation_reports_points_with_nonfinite_losses(tmp_path):
    from fastrobust.eval import evaluate, write_report

    model = NanWhere().float()
    x, y = flaky_inputs()
    report = evaluate(model, (x.float(), y), attacks=["pgd20"], eps=0.2, checks=[], seed=0)
    # sample 0's logits are NaN: argmax would call it class 0, its label; it is counted wrong
    assert report.clean_correct[0].item() is False
    (row,) = report.attacks
    assert 1 <= row.nonfinite <= row.points_attacked
    assert row.to_dict()["nonfinite"] == row.nonfinite
    paths = write_report(report, str(tmp_path))
    assert "Non-finite losses" in open(paths["md"]).read()
    assert "nonfinite" in open(paths["csv"]).readline()
