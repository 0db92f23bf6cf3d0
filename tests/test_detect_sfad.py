"""SFAD (fastrobust.detect.sfad) on sklearn's 8x8 digits with the survey's MNIST CNN."""
import pytest
import torch
from torch import nn

from fastrobust.data import load_digits
from fastrobust.detect.metrics import auroc
from fastrobust.detect.sfad import (DISAGREEMENT, SFAD, SFADHead, confidence_logit, fused_log_probabilities,
                                    selective_loss)

# one intra-op thread for the whole module: its small networks run much faster so on a loaded CPU
pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"), pytest.mark.usefixtures("one_thread")]

EPOCHS = 8  # enough for the heads on the digits (the default is the official 30)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits_model(one_thread, survey_digits_model):
    """The shared survey_cnn_mnist trained on the digits (conftest)."""
    return survey_digits_model


@pytest.fixture(scope="module")
def fitted(digits_model):
    """(SFAD fitted on the training digits, the classifier's state before the fit)."""
    x, y = load_digits("train")
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    return SFAD(epochs=EPOCHS).fit(digits_model, x, y, generator=_generator(6)), before


# -- the head --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 1, 1), (6, 2, 2), (5, 4, 4), (3, 8, 8), (4, 3, 5), (40, 1, 1)])
def test_head_works_on_every_map_size(shape):
    head = SFADHead(shape, num_classes=10, width=8, dense=8)
    maps = torch.randn(5, *shape, generator=_generator(1))
    for mode in (True, False):
        class_logits, selection, aux = head.train(mode)(maps, _generator(2))
        assert class_logits.shape == aux.shape == (5, 10) and selection.shape == (5,)
        assert torch.isfinite(class_logits).all() and torch.isfinite(selection).all() and torch.isfinite(aux).all()


def test_head_takes_flat_features_as_1x1_maps_and_is_noisy_only_in_training():
    head = SFADHead((12, 1, 1), num_classes=3, width=8, dense=8)
    flat = torch.randn(6, 12, generator=_generator(3))
    head.eval()
    for a, b in zip(head(flat), head(flat[:, :, None, None])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(head(flat, _generator(4)), head(flat, _generator(5))):  # eval: no noise drawn
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    head.train()
    assert not torch.equal(head(flat, _generator(4))[0], head(flat, _generator(5))[0])
    torch.testing.assert_close(head(flat, _generator(4))[0], head(flat, _generator(4))[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="maps"):
        head(torch.randn(6, 12, 2, 2))


def test_head_bottleneck_widths_follow_the_channel_count():
    head = SFADHead((64, 2, 2), num_classes=10, width=8, dense=8)
    convs = [m for m in head.clean.bottleneck.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 16, 4, 16, 32, 64]
    tiny = SFADHead((3, 2, 2), num_classes=10, width=8, dense=8)
    convs = [m for m in tiny.noisy.bottleneck.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [1, 1, 1, 1, 1, 3]


# -- loss and fusion -------------------------------------------------------------------------

def test_selective_loss_is_selectivenet():
    g = _generator(7)
    class_logits, aux = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    labels = torch.randint(0, 4, (8,), generator=g)
    selection = torch.randn(8, generator=g)
    ce = nn.functional.cross_entropy(class_logits, labels, reduction="none")
    s = torch.sigmoid(selection)
    expected = 0.5 * ((s * ce).sum() / s.sum() + 32 * max(0.0, 0.9 - float(s.mean())) ** 2) \
        + 0.5 * nn.functional.cross_entropy(aux, labels)
    torch.testing.assert_close(selective_loss(class_logits, selection, aux, labels, 0.9, 0.5, 32.0), expected)
    # equal selection scores: the selective risk is the plain cross-entropy
    flat = selective_loss(class_logits, torch.full((8,), 3.0), aux, labels, 0.5, 1.0, 32.0)
    torch.testing.assert_close(flat, ce.mean())


def test_fusion_averages_probabilities_and_confidence_logit_is_exact():
    logits = torch.randn(3, 5, 4, generator=_generator(8), dtype=torch.float64)
    mean_p = logits.softmax(-1).mean(0)
    torch.testing.assert_close(fused_log_probabilities(logits).exp(), mean_p)
    top = mean_p.max(1).values
    torch.testing.assert_close(confidence_logit(mean_p.log()), torch.log(top / (1 - top)))
    sure = torch.tensor([[0.0, -60.0, -70.0]])  # P_max rounds to 1 in float32; the logit stays finite
    assert torch.isclose(confidence_logit(sure), torch.tensor([60.0]), atol=1e-3).all()


# -- the detector ------------------------------------------------------------------------------

def test_sfad_heads_classify_held_out_digits(fitted):
    det, _ = fitted
    x_test, y_test = load_digits("test")
    assert det.layers == ("layer2", "dropout", "penultimate")
    assert [h.shape for h in det.heads] == [(64, 2, 2), (256, 1, 1), (256, 1, 1)]
    with torch.no_grad():
        _, class_logits, _ = det.head_outputs(x_test)
    for logits in class_logits:
        assert (logits.argmax(1) == y_test).double().mean() > 0.7
    assert (fused_log_probabilities(class_logits).argmax(1) == y_test).double().mean() > 0.9


def test_sfad_scores_noise_above_clean_digits(fitted):
    det, _ = fitted
    x_test, _ = load_digits("test")
    clean = det.score(x_test)
    noise = det.score(torch.rand(300, 1, 8, 8, generator=_generator(9)))
    assert clean.shape == (x_test.shape[0],) and clean.dtype == x_test.dtype
    assert torch.isfinite(clean).all() and torch.isfinite(noise).all()
    assert auroc(clean, noise) > 0.9


def test_sfad_score_is_the_official_rule_at_zero(fitted):
    det, _ = fitted
    x, _ = load_digits("train")
    x_hold = x[det.holdout_rows[:det.batch_size]]  # one scoring batch: the same numbers as score()
    with torch.no_grad():
        logits, class_logits, selection = det.head_outputs(x_hold)
        log_p = fused_log_probabilities(class_logits)
        scores = det.score(x_hold)
    rejected = (selection < det.thresholds[:-1, None]).any(0) | (confidence_logit(log_p) < det.thresholds[-1])
    disagree = log_p.argmax(1) != logits.argmax(1)
    assert torch.equal(scores > 0, rejected | disagree)
    assert torch.equal(scores > 1, disagree) and (scores >= -1).all() and (scores <= 1 + DISAGREEMENT).all()


def test_sfad_thresholds_are_the_official_percentiles_of_the_percentile_rows(fitted):
    det, _ = fitted
    x, _ = load_digits("train")
    with torch.no_grad():
        _, class_logits, selection = det.head_outputs(x[det.percentile_rows])
    confidence = confidence_logit(fused_log_probabilities(class_logits))
    # the official MNIST percentiles: 6 (selection, per layer), 1.2 (confidence)
    shares = (selection < det.thresholds[:-1, None]).double().mean(1)
    assert ((shares - 0.06).abs() < 0.015).all(), shares
    assert abs(float((confidence < det.thresholds[-1]).double().mean()) - 0.012) < 0.01


def test_sfad_score_is_deterministic_and_differentiable(fitted):
    det, _ = fitted
    x_test, _ = load_digits("test")
    x = x_test[:20].clone().requires_grad_(True)
    scores = det.score(x)
    torch.testing.assert_close(scores.detach(), det.score(x_test[:20]), rtol=0, atol=0)
    torch.testing.assert_close(det.score(x_test[:20]), det.score(x_test)[:20], rtol=0, atol=1e-4)
    scores.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for h in det.heads for p in h.parameters())
    assert all(not h.training for h in det.heads)


def test_sfad_percentile_rows_are_held_out_and_the_classifier_is_untouched(fitted, digits_model):
    det, before = fitted
    x, y = load_digits("train")
    train, hold, pct = set(det.train_rows.tolist()), set(det.holdout_rows.tolist()), set(det.percentile_rows.tolist())
    assert not train & hold and train | hold == set(range(x.shape[0]))
    assert len(hold) == round(0.2 * x.shape[0]) and pct <= hold and len(pct) > 0.9 * len(hold)
    with torch.no_grad():
        predicted = digits_model(x[det.percentile_rows]).argmax(1)
    assert torch.equal(predicted, y[det.percentile_rows])
    after = digits_model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert not digits_model.training


def test_sfad_fit_is_deterministic_from_the_generator(digits_model):
    x, y = load_digits("train")
    x, y = x[:300], y[:300]
    options = dict(epochs=1, width=8, dense=8, batch_size=100)
    a = SFAD(**options).fit(digits_model, x, y, generator=_generator(11))
    b = SFAD(**options).fit(digits_model, x, y, generator=_generator(11))
    c = SFAD(**options).fit(digits_model, x, y, generator=_generator(12))
    probe = load_digits("test")[0][:50]
    torch.testing.assert_close(a.score(probe), b.score(probe), rtol=0, atol=0)
    assert torch.equal(a.holdout_rows, b.holdout_rows) and not torch.equal(a.holdout_rows, c.holdout_rows)
    assert a.coverage_used == 1.0  # one channel: the official MNIST coverage


@pytest.mark.parametrize("kwargs, name", [
    ({"width": 0}, "width"), ({"dense": 2.5}, "dense"), ({"epochs": 0}, "epochs"), ({"batch_size": 1}, "batch_size"),
    ({"lr": 0}, "lr"), ({"weight_decay": -1}, "weight_decay"), ({"noise_std": float("nan")}, "noise_std"),
    ({"alpha": 1.5}, "alpha"), ({"lam": -1}, "lam"), ({"coverage": 0}, "coverage"), ({"coverage": 1.2}, "coverage"),
    ({"selection_percentile": 100}, "selection_percentile"), ({"confidence_percentile": 0}, "confidence_percentile"),
    ({"holdout": 1.0}, "holdout"), ({"layers": []}, "layers"), ({"layers": ["fc1", "fc1"]}, "layers"),
])
def test_sfad_bad_options_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SFAD(**kwargs)


def test_sfad_bad_fit_inputs_raise_value_error(digits_model):
    x, y = load_digits("test")
    with pytest.raises(ValueError, match="layers"):
        SFAD(layers=["nope"], epochs=1).fit(digits_model, x, y)
    with pytest.raises(ValueError, match="y must hold"):
        SFAD(epochs=1).fit(digits_model, x, y + 10)
    with pytest.raises(ValueError, match="holdout"):
        SFAD(epochs=1, holdout=0.1).fit(digits_model, x[:3], y[:3])
    with pytest.raises(ValueError, match="x_adv"):
        SFAD(epochs=1).fit(digits_model, x, y, x)
    with pytest.raises(ValueError, match="shape"):
        SFADHead((4, 2), num_classes=10)
