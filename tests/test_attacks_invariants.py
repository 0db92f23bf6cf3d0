"""Multi-step invariants of every attack over hypothesis-generated inputs: the result stays in
the eps-ball and the box, keeps shape/dtype, and its success flags and losses describe x_adv."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fastrobust import attacks
from fastrobust.attacks.objectives import attack_loss
from fastrobust.reference import pgd as ref

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")

SHAPES = [(3,), (1, 4, 4), (2, 3, 5)]
BOXES = [(0.0, 1.0), (-1.0, 1.0)]
CLASSES = 5


def linear_model_and_inputs(g, batch, shape, lo, hi):
    """A float64 linear classifier over `shape` and a batch of inputs uniform in [lo, hi]."""
    features = math.prod(shape)
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, CLASSES)).double()
    with torch.no_grad():
        model[1].weight.copy_(3 * torch.randn(CLASSES, features, generator=g, dtype=torch.float64))
    return model, lo + (hi - lo) * torch.rand(batch, *shape, generator=g, dtype=torch.float64)


def make_attack(kind, model, eps, steps, norm, lo, hi, seed):
    common = dict(eps=eps, norm=norm, lo=lo, hi=hi, seed=seed)
    alpha = eps / 3
    return {
        "pgd": lambda: attacks.PGD(model, alpha=alpha, steps=steps, restarts=2, **common),
        "pgd-cw-loss": lambda: attacks.PGD(model, alpha=alpha, steps=steps, loss="cw", keep="loss", **common),
        "pgd-dlr-last": lambda: attacks.PGD(model, alpha=alpha, steps=steps, loss="dlr", keep="last", restarts=3,
                                            restart_batch=2, **common),
        "fat": lambda: attacks.FATPGD(model, alpha=alpha, steps=steps, tau=1, omega=0.01, **common),
        "alternating": lambda: attacks.AlternatingPGD(model, steps=steps, schedule=("ce", "cw", "dlr"),
                                                      random_start=True, **common),
        "hypocritical": lambda: attacks.HypocriticalPGD(model, alpha=alpha, steps=steps, keep="success", **common),
        "apgd": lambda: attacks.APGD(model, steps=steps, restarts=2, **common),
        "apgd-t": lambda: attacks.APGD(model, steps=steps, loss="dlr", targeted=True, n_target_classes=2, **common),
    }[kind]()


GOAL_OF = {"hypocritical": "correct"}
MAXIMISED_LOSS = {"pgd": "ce", "pgd-cw-loss": "cw", "pgd-dlr-last": "dlr", "fat": "ce", "apgd": "ce"}


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["pgd", "pgd-cw-loss", "pgd-dlr-last", "fat", "alternating", "hypocritical", "apgd",
                             "apgd-t"]),
       batch=st.integers(1, 5), shape=st.sampled_from(SHAPES), box=st.sampled_from(BOXES),
       norm=st.sampled_from(["linf", "l2"]), eps=st.floats(0.0, 0.6), steps=st.integers(0, 4),
       seed=st.integers(0, 2**31 - 1))
def test_result_in_ball_and_box_and_described_by_flags(kind, batch, shape, box, norm, eps, steps, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = box
    model, x = linear_model_and_inputs(g, batch, shape, lo, hi)
    y = torch.randint(0, CLASSES, (batch,), generator=g)

    result = make_attack(kind, model, eps, steps, norm, lo, hi, seed).run(x, y)

    x_adv = result.x_adv
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and torch.isfinite(x_adv).all()
    assert (x_adv >= lo).all() and (x_adv <= hi).all()
    delta = (x_adv - x).reshape(batch, -1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-9) + 1e-9).all(), (size, eps)
    with torch.no_grad():
        logits = model(x_adv)
    pred = logits.argmax(1)
    assert torch.equal(result.success, pred == y if GOAL_OF.get(kind) == "correct" else pred != y)
    assert result.loss.shape == (batch,) and result.loss.dtype == torch.float64
    if kind in MAXIMISED_LOSS:
        torch.testing.assert_close(result.loss, attack_loss(MAXIMISED_LOSS[kind], logits, y))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(batch=st.integers(1, 6), tau=st.integers(0, 3), steps=st.integers(0, 6), seed=st.integers(0, 2**31 - 1))
def test_fat_frozen_rows_match_the_reference(batch, tau, steps, seed):
    """Without noise and random start FAT is deterministic: every sample is output where the
    official loop outputs it, so rows frozen early are never touched again."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, CLASSES)).double()
    with torch.no_grad():
        model[1].weight.copy_(3 * torch.randn(CLASSES, 6, generator=g, dtype=torch.float64))
    x = torch.rand(batch, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (batch,), generator=g)
    ours = attacks.FATPGD(model, eps=0.3, alpha=0.07, steps=steps, tau=tau, omega=0.0, random_start=False)(x, y)
    theirs = ref.fat_pgd(model, x, y, eps=0.3, alpha=0.07, steps=steps, tau=tau, omega=0.0, random_start=False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


IMAGES = [(1, 4, 4), (2, 5, 5), (3, 6, 6)]
P = {"linf": math.inf, "l2": 2, "l1": 1}


def make_search_attack(kind, model, eps, norm, lo, hi, seed):
    common = dict(eps=eps, lo=lo, hi=hi, seed=seed)
    return {
        "square": lambda: attacks.Square(model, norm=norm, queries=12, p_init=0.5, **common),
        "fab": lambda: attacks.FAB(model, norm=norm, steps=4, restarts=2, **common),
        "fab-t": lambda: attacks.FAB(model, norm=norm, steps=3, targeted=True, n_target_classes=2, **common),
        "apgd-l1": lambda: attacks.APGD(model, norm="l1", steps=5, eps_schedule=True, **common),
        "pgd-l1": lambda: attacks.PGD(model, norm="l1", steps=3, alpha=eps / 2, restarts=2, l1_sparsity=0.7,
                                      **common),
        "hsj": lambda: attacks.HopSkipJump(model, norm=norm, iterations=2, init_evals=5, max_evals=20,
                                           init_tries=20, **common),
        "cw-l2": lambda: attacks.CarliniWagnerL2(model, steps=5, binary_search_steps=2, **common),
        "deepfool": lambda: attacks.DeepFool(model, norm=norm, steps=3, candidates=3, **common),
    }[kind]()


SEARCH_NORMS = {"square": ("linf", "l2", "l1"), "fab": ("linf", "l2", "l1"), "fab-t": ("linf", "l2", "l1"),
                "apgd-l1": ("l1",), "pgd-l1": ("l1",), "hsj": ("linf", "l2"), "cw-l2": ("l2",),
                "deepfool": ("linf", "l2")}
NO_GRADIENT = ("square", "hsj")


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(SEARCH_NORMS)), norm_pick=st.integers(0, 2), batch=st.integers(1, 4),
       shape=st.sampled_from(IMAGES), box=st.sampled_from(BOXES), eps=st.floats(0.0, 2.0),
       layout=st.sampled_from(["contiguous", "channels_last", "strided"]), seed=st.integers(0, 2**31 - 1))
def test_search_and_l1_attacks_stay_in_the_ball_and_the_box(kind, norm_pick, batch, shape, box, eps, layout, seed):
    """Square, FAB / FAB-T, APGD-L1, PGD-L1, HopSkipJump, CW-L2 and DeepFool: the result stays in
    the ball of its norm and in the box, keeps shape, dtype and memory layout, its success flags
    say whether x_adv is misclassified, and the decision-based attacks take no gradient."""
    norms = SEARCH_NORMS[kind]
    norm = norms[norm_pick % len(norms)]
    g = torch.Generator().manual_seed(seed)
    lo, hi = box
    model, x = linear_model_and_inputs(g, batch, shape, lo, hi)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = (lo + (hi - lo) * torch.rand(batch, shape[0], shape[1], 2 * shape[2], generator=g,
                                         dtype=torch.float64))[..., ::2]
    y = torch.randint(0, CLASSES, (batch,), generator=g)

    result = make_search_attack(kind, model, eps, norm, lo, hi, seed).run(x, y)

    x_adv = result.x_adv
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and torch.isfinite(x_adv).all()
    assert x_adv.stride() == x.stride() or layout == "strided"
    assert (x_adv >= lo).all() and (x_adv <= hi).all()
    size = (x_adv - x).reshape(batch, -1).norm(p=P[norm], dim=1)
    assert (size <= eps * (1 + 1e-6) + 1e-9).all(), (size, eps)
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    assert torch.equal(result.success, pred != y)
    if kind in NO_GRADIENT:
        assert result.backwards == 0


@pytest.mark.parametrize("kind", sorted(SEARCH_NORMS))
def test_search_and_l1_attacks_take_an_empty_batch(kind):
    g = torch.Generator().manual_seed(0)
    model, x = linear_model_and_inputs(g, 0, (2, 5, 5), 0.0, 1.0)
    result = make_search_attack(kind, model, 0.5, SEARCH_NORMS[kind][0], 0.0, 1.0, 0).run(
        x, torch.zeros(0, dtype=torch.long))
    assert result.x_adv.shape == x.shape and result.success.shape == (0,)
