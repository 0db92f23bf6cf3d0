"""NSS and DNR detectors (fastrobust.detect.nss, fastrobust.detect.dnr) on sklearn's 8x8 digits."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from fastrobust.data import load_digits
from fastrobust.detect.dnr import DNR, couple, fit_rbf_svc, platt_fit
from fastrobust.detect.features import batched_features
from fastrobust.detect.metrics import auroc
from fastrobust.detect.nss import GREY_WEIGHTS, NSS, aggd_fit, ggd_fit, nss_features
from fastrobust.testing import train_digits_cnn

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_features(img: np.ndarray) -> np.ndarray:
    """The 18 features of one (H, W) float64 image, written directly from the BRISQUE recipe
    (per image, numpy/scipy, replicate padding, brute-force grid search)."""
    from scipy.ndimage import correlate
    from scipy.special import gamma

    r = np.arange(7) - 3
    g = np.exp(-r ** 2 / (2 * (7 / 6) ** 2))
    k = np.outer(g, g) / np.outer(g, g).sum()
    mu = correlate(img, k, mode="nearest")
    m = (img - mu) / (np.sqrt(np.abs(correlate(img * img, k, mode="nearest") - mu * mu)) + 1 / 255)
    grid = 0.2 + 0.001 * np.arange(9801)
    ratios = gamma(2 / grid) ** 2 / (gamma(1 / grid) * gamma(3 / grid))

    def shape(rho):
        return grid[np.argmin(np.abs(ratios - rho))]

    v = m.ravel()
    feats = [shape(np.mean(np.abs(v)) ** 2 / np.mean(v * v)), np.mean(v * v)]
    for p in (m[:, :-1] * m[:, 1:], m[:-1] * m[1:], m[:-1, :-1] * m[1:, 1:], m[1:, :-1] * m[:-1, 1:]):
        v = p.ravel()
        sl, sr = np.sqrt(np.mean(v[v < 0] ** 2)), np.sqrt(np.mean(v[v >= 0] ** 2))
        gam = sl / sr
        a = shape(np.mean(np.abs(v)) ** 2 / np.mean(v * v) * (gam ** 3 + 1) * (gam + 1) / (gam ** 2 + 1) ** 2)
        mean = (sr - sl) * np.sqrt(gamma(1 / a) / gamma(3 / a)) * gamma(2 / a) / gamma(1 / a)
        feats += [a, mean, sl ** 2, sr ** 2]
    return np.array(feats)


# -- NSS features ------------------------------------------------------------------------------

def test_nss_features_finite_on_constant_and_digit_images():
    x, _ = load_digits("test")
    images = torch.cat([torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.3), torch.ones(1, 1, 8, 8), x[:5]])
    feats = nss_features(images)
    assert feats.shape == (8, 18)
    assert torch.isfinite(feats).all()
    # a constant image has a (numerically) zero MSCN map: every variance feature vanishes
    variances = feats[:3, [1, 4, 5, 8, 9, 12, 13, 16, 17]]
    assert variances.abs().max() < 1e-20


def test_nss_features_match_a_direct_reference():
    x, _ = load_digits("test")
    colour = torch.rand(2, 3, 12, 10, generator=_generator())
    for img, feats in zip(x[:3, 0], nss_features(x[:3])):
        np.testing.assert_allclose(feats.numpy(), _reference_features(img.double().numpy()), rtol=1e-7, atol=1e-12)
    grey = torch.einsum("nchw,c->nhw", colour.double(), torch.tensor(GREY_WEIGHTS, dtype=torch.float64))
    for img, feats in zip(grey, nss_features(colour)):
        np.testing.assert_allclose(feats.numpy(), _reference_features(img.numpy()), rtol=1e-7, atol=1e-12)


def test_nss_colour_image_with_equal_channels_has_the_grey_features():
    grey = torch.rand(3, 1, 9, 11, generator=_generator(1))
    torch.testing.assert_close(nss_features(grey.expand(-1, 3, -1, -1)), nss_features(grey))


def test_ggd_fit_recovers_the_shape_of_gaussian_and_laplace_samples():
    g = _generator(2)
    gauss = 1.5 * torch.randn(4, 50_000, generator=g, dtype=torch.float64)
    laplace = torch.empty(4, 50_000, dtype=torch.float64).exponential_(generator=g) * torch.sign(
        torch.rand(4, 50_000, generator=g, dtype=torch.float64) - 0.5)
    alpha, var = ggd_fit(gauss)
    assert torch.allclose(alpha, torch.full_like(alpha, 2.0), rtol=0.1)
    assert torch.allclose(var, torch.full_like(var, 2.25), rtol=0.05)
    alpha, var = ggd_fit(laplace)
    assert torch.allclose(alpha, torch.ones_like(alpha), rtol=0.1)
    assert torch.allclose(var, torch.full_like(var, 2.0), rtol=0.05)  # Laplace(0, 1): variance 2


def test_aggd_fit_recovers_asymmetric_left_and_right_variances():
    # an AGGD of shape 2 with sigma_l = 1, sigma_r = 2: the left side has probability 1/3 and is a half-normal
    g = _generator(3)
    n = 60_000
    left = torch.rand(3, n, generator=g, dtype=torch.float64) < 1 / 3
    magnitude = torch.randn(3, n, generator=g, dtype=torch.float64).abs()
    v = torch.where(left, -magnitude, 2 * magnitude)
    alpha, mean, var_l, var_r = aggd_fit(v)
    assert torch.allclose(alpha, torch.full_like(alpha, 2.0), rtol=0.1)
    assert torch.allclose(var_l, torch.ones_like(var_l), rtol=0.05)
    assert torch.allclose(var_r, torch.full_like(var_r, 4.0), rtol=0.05)
    assert torch.allclose(mean, v.mean(1), atol=0.05)  # the fitted mean is the distribution's


# -- NSS detector ------------------------------------------------------------------------------

def test_nss_separates_clean_digits_from_noisy_ones():
    x, y = load_digits("train")
    x_test, _ = load_digits("test")
    g = _generator(4)

    def noisy(images):
        return (images + 0.3 * torch.randn(images.shape, generator=g)).clamp(0, 1)

    det = NSS().fit(nn.Identity(), x, y, noisy(x))
    clean, adv = det.score(x_test), det.score(noisy(x_test))
    assert clean.shape == (x_test.shape[0],) and clean.dtype == x_test.dtype
    assert auroc(clean, adv) > 0.9


def test_nss_options_and_inputs_are_checked():
    x, y = load_digits("test")
    with pytest.raises(ValueError, match="x_adv"):
        NSS().fit(nn.Identity(), x, y)
    for kwargs, name in (({"C": 0}, "C"), ({"gamma": float("nan")}, "gamma"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=name):
            NSS(**kwargs)
    with pytest.raises(ValueError, match="channels"):
        nss_features(torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="2x2"):
        nss_features(torch.rand(2, 1, 1, 8))


# -- DNR -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_model(one_thread):
    """SmallCNN (width 8) trained for 25 epochs on the digits' training split (about 97 % test
    accuracy; fastrobust.testing.train_digits_cnn leaves the global RNG as it was)."""
    x, y = load_digits("train")
    return train_digits_cnn(x, y, width=8, epochs=25)


@pytest.fixture(scope="module")
def dnr(digits_model):
    x, y = load_digits("train")
    return DNR().fit(digits_model, x, y, generator=_generator(6))


def test_dnr_scores_noise_as_more_adversarial_than_clean_digits(dnr):
    x_test, _ = load_digits("test")
    assert dnr.layers == ("layer1", "layer2", "penultimate")
    clean = dnr.score(x_test)
    noise = dnr.score(torch.rand(200, 1, 8, 8, generator=_generator(7)))
    assert clean.shape == (x_test.shape[0],) and noise.shape == (200,)
    assert torch.isfinite(clean).all() and ((clean >= -1) & (clean < 0)).all()
    assert noise.mean() > clean.mean() + 0.1


def test_dnr_combiner_never_sees_the_layer_svms_rows(dnr, digits_model):
    x, y = load_digits("train")
    layer_rows, combiner_rows = dnr.layer_rows, dnr.combiner_rows
    assert layer_rows.numel() == x.shape[0] // 2 and combiner_rows.numel() == x.shape[0] - x.shape[0] // 2
    assert not set(layer_rows.tolist()) & set(combiner_rows.tolist())
    # each SVM was trained on its own half: as many rows, and its support vectors are among them
    _, feats = batched_features(digits_model, x[layer_rows], dnr.layers)
    for svm, layer in zip(dnr.layer_svms, dnr.layers):
        assert svm.svc.shape_fit_[0] == layer_rows.numel()
        assert torch.cdist(svm.support, feats[layer].double()).min(1).values.max() < 1e-5
    with torch.no_grad():
        probs = dnr._layer_probabilities(x[combiner_rows])
    assert dnr.combiner.svc.shape_fit_[0] == combiner_rows.numel()
    assert torch.cdist(dnr.combiner.support, probs).min(1).values.max() < 1e-5

    capped = DNR(max_train=300).fit(digits_model, x, y, generator=_generator(8))
    rows = torch.cat([capped.layer_rows, capped.combiner_rows])
    assert capped.layer_rows.numel() == capped.combiner_rows.numel() == 150 and rows.unique().numel() == 300


def test_dnr_torch_svms_match_sklearn_decision_function(dnr, digits_model):
    x_test, _ = load_digits("test")
    _, feats = batched_features(digits_model, x_test, dnr.layers)
    with torch.no_grad():
        probs = dnr._layer_probabilities(x_test)
    for svm, z in [(s, feats[l]) for s, l in zip(dnr.layer_svms, dnr.layers)] + [(dnr.combiner, probs)]:
        expected = torch.as_tensor(svm.svc.decision_function(z.double().numpy()))
        torch.testing.assert_close(svm.decision(z), expected, rtol=1e-9, atol=1e-9)
        p = svm.proba(z)
        torch.testing.assert_close(p.sum(1), torch.ones(z.shape[0], dtype=torch.float64))
        assert (p >= 0).all()
        # the most probable class is (almost always) the SVM's own prediction
        agree = (svm.svc.classes_[p.argmax(1).numpy()] == svm.svc.predict(z.double().numpy())).mean()
        assert agree > 0.97


def test_binary_svm_sign_and_probabilities():
    g = _generator(9)
    z = torch.cat([torch.randn(40, 3, generator=g) - 1, torch.randn(40, 3, generator=g) + 1])
    labels = torch.cat([torch.zeros(40), torch.ones(40)]).long() + 3
    svm = fit_rbf_svc(z, labels, 1.0, g, "test")
    # libsvm's decision values are positive for the first class; sklearn's binary ones for the second
    torch.testing.assert_close(svm.decision(z)[:, 0], -torch.as_tensor(svm.svc.decision_function(z.double().numpy())))
    p = svm.proba(z)
    torch.testing.assert_close(p[:, 0], torch.sigmoid(-(svm.decision(z)[:, 0] * svm.prob_a + svm.prob_b)))
    assert (p[:40, 0] > 0.5).float().mean() > 0.9 and (p[40:, 1] > 0.5).float().mean() > 0.9


def test_dnr_score_is_differentiable(dnr):
    x_test, _ = load_digits("test")
    x = x_test[:6].clone().requires_grad_(True)
    scores = dnr.score(x)
    scores.sum().backward()
    torch.testing.assert_close(scores.detach(), dnr.score(x_test[:6]))
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum((1, 2, 3)) > 0).all()
    z = torch.rand(3, 30, generator=_generator(10), dtype=torch.float64) / 10
    assert torch.autograd.gradcheck(dnr.combiner.proba, (z.requires_grad_(True),))


def test_couple_solves_the_pairwise_coupling_problem():
    g = _generator(11)
    k = 5
    pairs = torch.tensor([(i, j) for i in range(k) for j in range(i + 1, k)])
    # consistent pairwise probabilities r_ij = p_i / (p_i + p_j) give p back
    p = torch.rand(4, k, generator=g, dtype=torch.float64) + 0.05
    p = p / p.sum(1, keepdim=True)
    r = p[:, pairs[:, 0]] / (p[:, pairs[:, 0]] + p[:, pairs[:, 1]])
    torch.testing.assert_close(couple(r, pairs), p)
    # arbitrary ones: a probability vector at which Qp is constant (the optimality condition)
    r = torch.rand(4, pairs.shape[0], generator=g, dtype=torch.float64).clamp(0.01, 0.99)
    q = couple(r, pairs)
    torch.testing.assert_close(q.sum(1), torch.ones(4, dtype=torch.float64))
    assert (q >= 0).all()
    full = torch.zeros(4, k, k, dtype=torch.float64)
    full[:, pairs[:, 0], pairs[:, 1]] = r
    full[:, pairs[:, 1], pairs[:, 0]] = 1 - r
    Q = torch.diag_embed((full.transpose(1, 2) ** 2).sum(2)) - full.transpose(1, 2) * full
    Qp = (Q @ q.unsqueeze(2)).squeeze(2)
    torch.testing.assert_close(Qp, Qp[:, :1].expand_as(Qp))


def test_platt_fit_recovers_a_logistic_model():
    g = _generator(12)
    dec = 6 * torch.rand(40_000, generator=g, dtype=torch.float64) - 3
    positive = torch.rand(40_000, generator=g, dtype=torch.float64) < torch.sigmoid(-(-2.0 * dec + 0.5))
    a, b = platt_fit(dec, positive)
    assert math.isclose(a, -2.0, rel_tol=0.05) and math.isclose(b, 0.5, abs_tol=0.05)


def test_dnr_options_and_layers_are_checked(digits_model):
    x, y = load_digits("test")
    for kwargs, name in (({"layers": "layer1"}, "layers"), ({"layers": []}, "layers"),
                         ({"layers": ("layer1", "layer1")}, "layers"), ({"C": 0}, "C"),
                         ({"combiner_C": -1.0}, "combiner_C"), ({"max_train": 1}, "max_train"),
                         ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=name):
            DNR(**kwargs)
    with pytest.raises(ValueError, match="layers"):
        DNR(layers=("layer1", "nope")).fit(digits_model, x, y)
    with pytest.raises(ValueError, match="x_adv"):
        DNR().fit(digits_model, x, y, x)
    with pytest.raises(ValueError, match="^y: "):
        DNR(max_train=20).fit(digits_model, x, y)  # 10 rows per half: classes with a single image
    det = DNR(layers=("layer2", "penultimate")).fit(digits_model, x, y, generator=_generator(13))
    assert det.layers == ("layer2", "penultimate") and len(det.layer_svms) == 2
    assert det.combiner.support.shape[1] == 20
