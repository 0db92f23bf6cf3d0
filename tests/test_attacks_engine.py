"""The engine: restarts folded into the batch give each sample its worst case, passes of
restart_batch groups drop the samples already fooled, forward/backward counts, eval mode."""
import pytest
import torch
from torch import nn

from fastrobust import attacks
from fastrobust.attacks.engine import Attack
from fastrobust.attacks.rows import RowOutcome

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")


def linear_model(features=12, classes=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).to(dtype)
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, features, generator=g, dtype=dtype))
        model[1].bias.copy_(torch.randn(classes, generator=g, dtype=dtype))
    return model


def inputs(n=6, shape=(3, 2, 2), classes=5, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def worst_case(x_rows, loss, success, restarts):
    """Per sample: the first successful restart, else the highest loss (first on ties)."""
    b = x_rows.shape[0] // restarts
    loss, success = loss.view(restarts, b), success.view(restarts, b)
    pick = torch.where(success.any(0), success.float().argmax(0), loss.argmax(0))
    return x_rows.view(restarts, b, *x_rows.shape[1:])[pick, torch.arange(b)], success.any(0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("keep", ["success", "loss", "last"])
def test_folded_restarts_give_the_worst_case_of_the_same_rows(norm, keep):
    """R restarts of B samples run exactly the rows of one restart on x.repeat(R): the same
    start (one random stream over all rows), the same steps; the result is their worst case."""
    model, (x, y), restarts = linear_model(), inputs(), 4
    kwargs = dict(eps=0.3 if norm == "linf" else 0.8, alpha=0.1, steps=3, norm=norm, keep=keep, seed=7)
    folded = attacks.PGD(model, restarts=restarts, restart_batch=None, **kwargs).run(x, y)
    rows = attacks.PGD(model, **kwargs).run(x.repeat(restarts, 1, 1, 1), y.repeat(restarts))
    expect_x, expect_success = worst_case(rows.x_adv, rows.loss, rows.success, restarts)
    assert torch.equal(folded.success, expect_success)
    torch.testing.assert_close(folded.x_adv, expect_x, rtol=0, atol=0)
    assert folded.forwards == rows.forwards == restarts * len(y) * 4
    assert folded.backwards == restarts * len(y) * 3


class Scripted(Attack):
    """An attack whose passes return hand-made per-group results (to test the engine alone):
    group g moves sample b to x + 0.01*(g + 1) with loss[g, b] and success[g, b]. Labels are
    the sample ids."""

    def __init__(self, loss, success, restart_batch=None):
        super().__init__(nn.Identity(), eps=1.0)
        self.restarts, self.restart_batch = loss.shape[0], restart_batch
        self.loss_table, self.success_table = loss, success
        self.passes = []

    def _run_rows(self, ctx, rows, evaluate):
        samples = rows.n // rows.groups
        self.passes.append((rows.first_group, rows.groups, rows.y[:samples].tolist()))
        group = torch.arange(rows.first_group, rows.first_group + rows.groups).repeat_interleave(samples)
        x = rows.x0 + 0.01 * (group + 1).view(-1, 1)
        return RowOutcome(x, self.loss_table[group, rows.y], self.success_table[group, rows.y])


SCRIPT_LOSS = torch.tensor([[1.0, 5.0, 2.0, 0.0],
                            [3.0, 4.0, 2.0, 9.0],
                            [2.0, 6.0, 7.0, 1.0]])
SCRIPT_SUCCESS = torch.tensor([[False, False, False, False],
                               [False, True, False, False],
                               [True, True, False, False]])


@pytest.mark.parametrize("restart_batch", [None, 1, 2])
def test_worst_case_and_compaction(restart_batch):
    x, ids = torch.full((4, 1), 0.5), torch.arange(4)
    attack = Scripted(SCRIPT_LOSS, SCRIPT_SUCCESS, restart_batch)
    result = attack.run(x, ids)
    # sample 0: first success in group 2; 1: group 1 (first success); 2: highest loss, group 2; 3: group 1
    torch.testing.assert_close(result.x_adv[:, 0], 0.5 + 0.01 * torch.tensor([3.0, 2.0, 3.0, 2.0]))
    assert result.success.tolist() == [True, True, False, False]
    assert result.loss.tolist() == [2.0, 4.0, 7.0, 9.0]
    if restart_batch is None:
        assert attack.passes == [(0, 3, [0, 1, 2, 3])]
    elif restart_batch == 1:
        assert attack.passes == [(0, 1, [0, 1, 2, 3]), (1, 1, [0, 1, 2, 3]), (2, 1, [0, 2, 3])]
    else:
        assert attack.passes == [(0, 2, [0, 1, 2, 3]), (2, 1, [0, 2, 3])]


def test_passes_stop_once_every_sample_is_fooled():
    success = torch.tensor([[True, True], [False, False], [False, False]])
    attack = Scripted(torch.zeros(3, 2), success, restart_batch=1)
    assert attack.run(torch.full((2, 1), 0.5), torch.arange(2)).success.all()
    assert [p[0] for p in attack.passes] == [0]


def test_restart_batch_compacts_real_restarts():
    model, (x, y) = linear_model(), inputs(n=16)
    result = attacks.PGD(model, eps=0.5, alpha=0.2, steps=2, restarts=3, restart_batch=1, seed=0).run(x, y)
    fooled_first = attacks.PGD(model, eps=0.5, alpha=0.2, steps=2, seed=0).run(x, y).success
    assert 0 < fooled_first.sum() < 16
    assert result.success.sum() >= fooled_first.sum()
    # later passes only run on the samples the first one did not fool
    assert result.forwards < 3 * 16 * 3
    assert result.forwards >= 16 * 3 + 2 * (16 - int(fooled_first.sum())) * 3 - 2 * 16 * 3


@pytest.mark.parametrize("make, forwards, backwards", [
    (lambda m: attacks.PGD(m, eps=0.1, steps=4, restarts=2, restart_batch=None), 2 * 6 * 5, 2 * 6 * 4),
    (lambda m: attacks.PGD(m, eps=0.1, steps=4, keep="last"), 6 * 5, 6 * 4),
    (lambda m: attacks.FATPGD(m, eps=0.1, steps=4), 6 * 5, 6 * 4),
    (lambda m: attacks.AlternatingPGD(m, eps=0.1, steps=4), 6 * 5, 6 * 4),
    (lambda m: attacks.HypocriticalPGD(m, eps=0.1, steps=4), 6 * 5, 6 * 4),
])
def test_pass_counts(make, forwards, backwards):
    model, (x, y) = linear_model(), inputs()
    result = make(model).run(x, y)
    assert (result.forwards, result.backwards) == (forwards, backwards)


def test_apgd_counts_the_clean_pass_and_skips_misclassified_samples():
    model, (x, y) = linear_model(), inputs(n=20)
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    assert 0 < correct < 20
    result = attacks.APGD(model, eps=0.05, steps=6, seed=0).run(x, y)
    assert result.forwards == 20 + correct * 7 and result.backwards == correct * 7
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    assert torch.equal(result.x_adv[wrong], x[wrong]) and result.success[wrong].all()


def test_input_dtype_layout_and_order_are_kept():
    model, (x, y) = linear_model(dtype=torch.float32), inputs(dtype=torch.float32)
    x_t = x.transpose(2, 3)  # a non-contiguous view
    out = attacks.PGD(model, eps=0.1, steps=2, seed=0)(x_t, y)
    assert out.shape == x_t.shape and out.dtype == x_t.dtype and out.stride() == x_t.stride()
    assert not out.requires_grad


def test_seed_makes_runs_reproducible():
    model, (x, y) = linear_model(), inputs()
    for make in (lambda s: attacks.PGD(model, eps=0.2, steps=2, seed=s),
                 lambda s: attacks.FATPGD(model, eps=0.2, steps=2, seed=s),
                 lambda s: attacks.APGD(model, eps=0.2, steps=2, seed=s)):
        assert torch.equal(make(3)(x, y), make(3)(x, y))
    assert not torch.equal(attacks.PGD(model, eps=0.2, steps=2, seed=3)(x, y),
                           attacks.PGD(model, eps=0.2, steps=2, seed=4)(x, y))


def test_cuda_graph_on_cpu_warns_and_runs_uncaptured():
    model, (x, y) = linear_model(), inputs()
    with pytest.warns(RuntimeWarning, match="cuda_graph=True needs CUDA tensors"):
        captured = attacks.PGD(model, eps=0.2, steps=2, seed=0, cuda_graph=True)(x, y)
    assert torch.equal(captured, attacks.PGD(model, eps=0.2, steps=2, seed=0)(x, y))


def test_restart_batch_auto_runs_groups_one_by_one_on_the_cpu_and_folds_them_on_a_gpu():
    """"auto" (the default): one restart / target class per pass on the CPU (the samples
    already fooled are not attacked again), all in one pass on CUDA devices."""
    model, (x, y) = linear_model(), inputs(n=16)
    attack = attacks.PGD(model, eps=0.5, alpha=0.2, steps=2, restarts=3, seed=0)
    assert attack.restart_batch == "auto"
    assert attack._groups_per_pass(3, torch.device("cpu")) == 1
    assert attack._groups_per_pass(3, torch.device("cuda")) == 3
    sequential = attacks.PGD(model, eps=0.5, alpha=0.2, steps=2, restarts=3, restart_batch=1, seed=0).run(x, y)
    auto = attack.run(x, y)
    assert auto.forwards == sequential.forwards and torch.equal(auto.x_adv, sequential.x_adv)
    assert attacks.APGD(model, targeted=True).restart_batch == "auto"
    with pytest.raises(ValueError, match="restart_batch must be an integer >= 1"):
        attacks.PGD(model, restart_batch=0)
    with pytest.raises(ValueError, match="restart_batch must be an integer >= 1"):
        attacks.APGD(model, restart_batch="always")
