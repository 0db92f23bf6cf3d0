"""Detector-aware attacks (fastrobust.detect.adaptive) on sklearn's 8x8 digits: the combined
attack against MagNet beats the oblivious PGD, points stay in the threat ball and the box, the
per-row lam search, the extra-class and logit-matching kinds, the gradient-free path for NSS,
EOT, the engine's callable-loss contract and the option checks."""
import math

import pytest
import torch

from fastrobust.attacks import PGD
from fastrobust.data import load_digits
from fastrobust.detect import NSS, MagNet, NotFittedError, success_against_detector
from fastrobust.detect.adaptive import (DetectorAware, adaptive_attack, combined_loss, extra_class_logits,
                                        extra_class_loss, logit_matching_loss)

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"), pytest.mark.usefixtures("one_thread")]

EPS = 0.3
STEPS = 20
ALPHA = 2.5 * EPS / STEPS


@pytest.fixture(scope="module")
def train():
    return load_digits("train")


@pytest.fixture(scope="module")
def batch():
    """64 test digits."""
    x, y = load_digits("test")
    return x[:64], y[:64]


@pytest.fixture(scope="module")
def model(survey_digits_model):
    """The shared survey_cnn_mnist trained on the digits (conftest)."""
    return survey_digits_model


@pytest.fixture(scope="module")
def magnet(model, train):
    """MagNet fitted on 600 training digits, threshold at 5 % FPR on the last 338 (held out).
    400 epochs: after 100 epochs the autoencoders do not yet tell eps-0.3 PGD digits from
    clean ones (DR 0 % measured), after 400 they do."""
    x, y = train
    det = MagNet(epochs=400).fit(model, x[:600], y[:600], generator=torch.Generator().manual_seed(0))
    det.threshold_at_fpr(x[1100:], 0.05)
    return det


@pytest.fixture(scope="module")
def nss(model, train):
    """NSS (not differentiable) fitted on 400 training digits and their PGD versions."""
    x, y = train
    x_adv = PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, seed=0, keep="last")(x[:400], y[:400])
    det = NSS().fit(model, x[:400], y[:400], x_adv=x_adv)
    det.threshold_at_fpr(x[1100:], 0.05)
    return det


def _oblivious(model, det, x, y):
    """(fooled, flagged) of plain PGD, which ignores the detector; its last iterate, as
    torchattacks' PGD returns (the first misclassified iterate, keep="success", lies closer to
    x and is flagged less often)."""
    x_adv = PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, seed=0, keep="last")(x, y)
    with torch.no_grad():
        return model(x_adv).argmax(1) != y, det.flag(x_adv)


def _detection_rate(fooled, flagged) -> float:
    """DR on the successful adversarial examples (misclassified ones)."""
    return float(flagged[fooled].float().mean()) if bool(fooled.any()) else 0.0


def _assert_in_ball(x_adv, x, eps=EPS, norm="linf"):
    assert ((x_adv >= 0) & (x_adv <= 1)).all()
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()


def _assert_info(info, n):
    assert info["fooled"].shape == info["flagged"].shape == info["success"].shape == (n,)
    assert torch.equal(info["success"], info["fooled"] & ~info["flagged"])


@pytest.fixture(scope="module")
def combined(model, magnet, batch):
    x, y = batch
    return adaptive_attack(model, magnet, x, y, EPS, steps=STEPS, lam_search_steps=3)


# -- (a), (b): the combined attack -----------------------------------------------------------

def test_combined_attack_beats_the_oblivious_attack(model, magnet, batch, combined):
    x, y = batch
    fooled, flagged = _oblivious(model, magnet, x, y)
    dr_oblivious = _detection_rate(fooled, flagged)
    assert dr_oblivious > 0.3  # the detector works against the attack that ignores it
    _, info = combined
    _assert_info(info, x.shape[0])
    assert not info["gradient_free"]
    assert _detection_rate(info["fooled"], info["flagged"]) < dr_oblivious / 2
    assert success_against_detector(info["fooled"], info["flagged"]) > success_against_detector(fooled, flagged) + 0.2


def test_combined_attack_stays_in_the_ball_and_the_box(batch, combined):
    _assert_in_ball(combined[0], batch[0])


def test_l2_attack_stays_in_the_l2_ball(model, magnet, batch):
    x, y = batch[0][:16], batch[1][:16]
    x_adv, info = adaptive_attack(model, magnet, x, y, 1.5, norm="l2", steps=10, lam_search_steps=1)
    _assert_in_ball(x_adv, x, 1.5, "l2")
    _assert_info(info, 16)


# -- (c): the per-row lam search -------------------------------------------------------------

def test_lam_search_raises_lam_of_flagged_rows_and_keeps_successes(model, magnet, batch):
    """At eps 0.15 (10 steps) the first round leaves rows flagged and rows not fooled: the
    search must end with a larger lam on the rows flagged there, a smaller one on the rows
    neither fooled nor flagged, lam_init on the rows successful there; later rounds only add
    successes (the first round of both calls is the same run)."""
    x, y = batch
    lam_init = 0.1
    kwargs = dict(steps=10, lam_init=lam_init, seed=1)
    _, first = adaptive_attack(model, magnet, x, y, 0.15, lam_search_steps=1, **kwargs)
    _, searched = adaptive_attack(model, magnet, x, y, 0.15, lam_search_steps=4, **kwargs)
    assert (first["lam"] == lam_init).all()
    flagged_first = ~first["success"] & first["flagged"]
    missed_first = ~first["fooled"] & ~first["flagged"]
    assert flagged_first.any()
    assert (searched["lam"][flagged_first] > lam_init).all()
    assert (searched["lam"][missed_first] < lam_init).all()
    assert (searched["lam"][first["success"]] == lam_init).all()
    assert (searched["success"] | ~first["success"]).all()
    assert searched["success"].sum() >= first["success"].sum()  # never worse (more on weaker detectors)


# -- (d): the other kinds --------------------------------------------------------------------

def test_extra_class_attack(model, magnet, batch):
    x, y = batch
    x_adv, info = adaptive_attack(model, magnet, x, y, EPS, kind="extra_class", steps=STEPS)
    _assert_in_ball(x_adv, x)
    _assert_info(info, x.shape[0])
    assert info["lam"] is None
    assert 0.0 <= success_against_detector(info["fooled"], info["flagged"]) <= 1.0


def test_extra_class_logits_follow_the_detector():
    logits = torch.tensor([[1.0, 3.0], [1.0, 3.0]])
    g = extra_class_logits(logits, torch.tensor([0.7, 0.3]), 0.5)  # s = +0.2 (flagged), -0.2
    assert g.shape == (2, 3)
    assert torch.allclose(g[:, 2], torch.tensor([3.6, 2.4]))
    assert torch.equal(g.argmax(1), torch.tensor([2, 1]))
    # the loss reaches its maximum 0 only where another real class beats y and the extra class
    loss = extra_class_loss(0.5)((logits, torch.tensor([0.7, 0.3])), torch.tensor([0, 0]))
    assert loss[0] < 0 and loss[1] == 0


def test_logit_matching_moves_towards_the_target_logits(model, magnet, batch):
    x, y = batch
    x_adv, info = adaptive_attack(model, magnet, x, y, EPS, kind="logit_matching", steps=STEPS)
    _assert_in_ball(x_adv, x)
    _assert_info(info, x.shape[0])
    # the default targets: for each row the first row of the batch with another label
    target = torch.stack([x[(y != label).nonzero()[0, 0]] for label in y])
    with torch.no_grad():
        z_t = model(target)
        before = (model(x) - z_t).norm(dim=1)
        after = (model(x_adv) - z_t).norm(dim=1)
    assert (after < before).float().mean() > 0.9
    assert after.mean() < 0.75 * before.mean()
    assert 0.0 <= success_against_detector(info["fooled"], info["flagged"]) <= 1.0


def test_logit_matching_takes_given_targets(model, magnet, batch):
    x, y = batch[0][:8], batch[1][:8]
    target = batch[0][8:16]
    x_adv, info = adaptive_attack(model, magnet, x, y, EPS, kind="logit_matching", steps=10, targets_x=target)
    _assert_in_ball(x_adv, x)
    loss = logit_matching_loss(model(target))
    assert (loss(model(x_adv), y) > loss(model(x), y)).all()


# -- (e): a non-differentiable detector ------------------------------------------------------

def test_non_differentiable_detector_goes_through_the_random_search(model, nss, batch):
    x, y = batch
    fooled, flagged = _oblivious(model, nss, x, y)
    x_adv, info = adaptive_attack(model, nss, x, y, EPS, steps=50, lam_search_steps=2)
    assert info["gradient_free"]
    _assert_in_ball(x_adv, x)
    _assert_info(info, x.shape[0])
    assert success_against_detector(info["fooled"], info["flagged"]) > success_against_detector(fooled, flagged)


def test_non_differentiable_detector_extra_class_and_logit_matching(model, nss, batch):
    x, y = batch[0][:16], batch[1][:16]
    x_adv, info = adaptive_attack(model, nss, x, y, EPS, kind="extra_class", steps=20)
    assert info["gradient_free"]
    _assert_in_ball(x_adv, x)
    x_adv, info = adaptive_attack(model, nss, x, y, EPS, kind="logit_matching", steps=10)
    assert not info["gradient_free"]  # it needs the classifier's gradient only
    _assert_in_ball(x_adv, x)


# -- EOT and the engine ----------------------------------------------------------------------

def test_eot_on_a_deterministic_detector_changes_nothing(model, magnet, batch):
    x, y = batch[0][:16], batch[1][:16]
    one, _ = adaptive_attack(model, magnet, x, y, EPS, steps=10, lam_search_steps=1)
    two, _ = adaptive_attack(model, magnet, x, y, EPS, steps=10, lam_search_steps=1, eot=2)
    assert torch.equal(one, two)


def test_losses_run_in_the_engine(model, magnet, batch):
    """DetectorAware + combined_loss follow the engine's callable-loss contract."""
    x, y = batch[0][:16], batch[1][:16]
    joint = DetectorAware(model, magnet)
    logits, score = joint(x)
    assert logits.shape == (16, 10) and score.shape == (16,)
    lam = torch.linspace(0.5, 2.0, 16)
    x_adv = PGD(joint, eps=EPS, alpha=ALPHA, steps=5, loss=combined_loss(magnet.threshold, lam=lam), seed=0)(x, y)
    _assert_in_ball(x_adv, x)
    loss = combined_loss(magnet.threshold, margin=0.1, lam=2.0)((logits, score), y)
    hinge = (score - magnet.threshold + 0.1).clamp_min(0)
    z_y = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    assert torch.allclose(loss, -((z_y - other).clamp_min(0) + 2.0 * hinge), atol=1e-5)


# -- (f): option checks ----------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("kind", "pgd"), ("norm", "l1"), ("steps", 0), ("alpha", -0.1), ("lam_search_steps", 0),
    ("lam_init", 0.0), ("kappa", -1.0), ("margin", float("nan")), ("seed", -1), ("eot", 0),
    ("targets_x", torch.zeros(4, 1, 8, 8)),
])
def test_bad_options_raise(model, magnet, batch, option, value):
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(ValueError, match=option):
        adaptive_attack(model, magnet, x, y, EPS, **{option: value})


def test_bad_inputs_raise(model, magnet, nss, batch):
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(ValueError, match="eps"):
        adaptive_attack(model, magnet, x, y, 0.0)
    with pytest.raises(ValueError, match="x must lie in"):
        adaptive_attack(model, magnet, x + 2, y, EPS)
    with pytest.raises(ValueError, match="targets_x"):
        adaptive_attack(model, magnet, x, y, EPS, kind="logit_matching", targets_x=x[:2])
    with pytest.raises(ValueError, match="targets_x"):  # one label: no image of another class in the batch
        adaptive_attack(model, magnet, x, torch.zeros_like(y), EPS, kind="logit_matching")
    with pytest.raises(ValueError, match="norm"):  # the random search is L-inf only
        adaptive_attack(model, nss, x, y, EPS, norm="l2")
    with pytest.raises(ValueError, match="threshold"):
        combined_loss(float("nan"))
    with pytest.raises(ValueError, match="lam"):
        combined_loss(0.5, lam=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="lam"):
        combined_loss(0.5, lam=torch.ones(3))((model(x), torch.zeros(4)), y)
    with pytest.raises(NotFittedError):
        adaptive_attack(model, MagNet(), x, y, EPS)
