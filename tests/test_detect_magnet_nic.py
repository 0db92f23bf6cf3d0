"""MagNet and NIC (fastrobust.detect.magnet, fastrobust.detect.nic) on a small CNN trained on
sklearn digits: shapes, separation of clean digits from noise, differentiability, frozen
autoencoders, determinism, trained probes, the disjoint NIC split and option checks."""
import pytest
import torch
from threadpoolctl import threadpool_limits

from fastrobust.data import load_digits
from fastrobust.detect.features import batched_features
from fastrobust.detect.magnet import MagNet, MagNetAE
from fastrobust.detect.metrics import auroc
from fastrobust.detect.nic import NIC
from fastrobust.testing import train_digits_cnn

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"), pytest.mark.usefixtures("single_threaded")]

SMALL_CNN_LAYERS = ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "pool", "classifier"]


@pytest.fixture(scope="module")
def single_threaded(one_thread):
    """One torch and one BLAS thread: on a loaded CPU, BLAS oversubscription makes sklearn's
    logistic regressions ten times slower."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits():
    return load_digits("train") + load_digits("test")


@pytest.fixture(scope="module")
def model(digits):
    """SmallCNN width 8, 300 Adam steps (about 97 % test accuracy)."""
    x, y, _, _ = digits
    return train_digits_cnn(x, y, width=8, epochs=25)


@pytest.fixture(scope="module")
def noise_images(digits):
    """(uniform noise images, clean test digits + N(0, 0.5^2) clipped), drawn from a fixed seed."""
    xt = digits[2]
    g = torch.Generator().manual_seed(1)
    return torch.rand(xt.shape, generator=g), (xt + 0.5 * torch.randn(xt.shape, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def magnet(model, digits):
    x, y, _, _ = digits
    return MagNet().fit(model, x, y, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def nic(model, digits):
    x, y, _, _ = digits
    return NIC().fit(model, x, y, generator=torch.Generator().manual_seed(0))


# -- MagNet ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["I", "II"])
@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 1, 7, 9), (1, 3, 5, 4), (1, 1, 1, 1)])
def test_magnet_ae_keeps_the_input_shape(kind, shape):
    out = MagNetAE(shape[1], kind)(torch.rand(shape))
    assert out.shape == shape
    assert ((0 < out) & (out < 1)).all()  # the last layer is a sigmoid


@pytest.mark.parametrize("kind, convs", [("I", 5), ("II", 3)])
def test_magnet_ae_structure(kind, convs):
    ae = MagNetAE(3, kind, filters=4)
    conv_layers = [m for m in ae.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(conv_layers) == convs
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in conv_layers)
    assert [c.out_channels for c in conv_layers] == [4] * (convs - 1) + [3]
    assert sum(isinstance(m, torch.nn.Sigmoid) for m in ae.modules()) == convs


def test_magnet_ae_odd_size_pools_like_keras_same():
    """Ceil-mode pooling averages the last odd row/column alone, leaving the padding out of the
    mean as Keras' "same" pooling does."""
    pooled = MagNetAE(1, "I").layers[1](torch.arange(9.0).reshape(1, 1, 3, 3))
    assert torch.equal(pooled, torch.tensor([[[[2.0, 3.5], [6.5, 8.0]]]]))


def test_magnet_separates_clean_digits_from_noise(magnet, digits, noise_images):
    clean = magnet.score(digits[2])
    for noisy in noise_images:
        scores = magnet.score(noisy)
        assert scores.mean() > clean.mean()
        assert auroc(clean, scores) > 0.9


def test_magnet_score_one_is_the_official_rule_at_training_quantiles(magnet, digits):
    """Each detector's error is divided by its 99.9 % training quantile: at most
    ceil(0.001 N) training images per detector lie above 1."""
    x = digits[0]
    flagged = int((magnet.score(x) > 1).sum())
    assert 0 < flagged <= 2 * len(magnet.detectors)
    assert magnet.scales.shape == (2,) and (magnet.scales > 0).all()


def test_magnet_score_is_differentiable_and_autoencoders_frozen(magnet, digits):
    x = digits[2][:16].clone().requires_grad_(True)
    scores = magnet.score(x)
    assert scores.shape == (16,)
    grad, = torch.autograd.grad(scores.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert len(magnet.autoencoders) == 2
    for ae in magnet.autoencoders:
        assert not ae.training
        assert not any(p.requires_grad for p in ae.parameters())


def test_magnet_fit_is_deterministic_and_leaves_the_global_rng(model, digits):
    x, y, xt, _ = digits

    def scores(seed):
        det = MagNet(epochs=2).fit(model, x, y, generator=torch.Generator().manual_seed(seed))
        return det.score(xt).detach()

    state = torch.random.get_rng_state()
    first = scores(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, scores(0))
    assert not torch.equal(first, scores(1))


@pytest.mark.parametrize("kwargs, name", [
    ({"noise": -0.1}, "noise"), ({"epochs": 0}, "epochs"), ({"epochs": 2.0}, "epochs"),
    ({"batch_size": 0}, "batch_size"), ({"lr": 0.0}, "lr"), ({"activity_l2": -1.0}, "activity_l2"),
    ({"detectors": ()}, "detectors"), ({"detectors": (("III", 2),)}, "detectors"),
    ({"detectors": (("I", 0),)}, "detectors"), ({"detectors": "I"}, "detectors"),
    ({"drop_rate": 1.0}, "drop_rate"), ({"drop_rate": -0.1}, "drop_rate"),
])
def test_magnet_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MagNet(**kwargs)


@pytest.mark.parametrize("kwargs, name", [({"kind": "III"}, "kind"), ({"channels": 0}, "channels"),
                                          ({"filters": 0}, "filters")])
def test_magnet_ae_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MagNetAE(**{"channels": 1, **kwargs})


# -- NIC -------------------------------------------------------------------------------------

def test_nic_default_layers_skip_identity(nic):
    assert nic.layers_ == SMALL_CNN_LAYERS  # `normalize` (nn.Identity) is left out
    assert len(nic.layer_models_) == 6 and len(nic.provenance_svms_) == 5
    assert nic.final_svm_.n_features_in_ == 11  # 6 value + 5 provenance decision values
    # gamma "scale": the value SVMs are not degenerate (official gamma = 1 keeps every image)
    assert all(len(m.value_svm.support_) < len(nic.layer_rows_) / 4 for m in nic.layer_models_)


def test_nic_separates_clean_digits_from_uniform_noise(nic, digits, noise_images):
    clean = nic.score(digits[2])
    noise = nic.score(noise_images[0])
    assert clean.shape == (digits[2].shape[0],) and torch.isfinite(clean).all()
    assert noise.mean() > clean.mean()
    assert auroc(clean, noise) > 0.9


def test_nic_probes_are_trained(nic, model, digits):
    x, y, _, _ = digits
    rows = nic.layer_rows_
    _, features = batched_features(model, x[rows], nic.layers_)
    for layer, layer_model in zip(nic.layers_, nic.layer_models_):
        reduced = layer_model.reduce(features[layer].double().numpy())
        accuracy = (layer_model.probabilities(reduced).argmax(1) == y[rows].numpy()).mean()
        assert accuracy > 0.5, layer  # an untrained probe (official code) is near chance, 0.1


def test_nic_final_rows_are_disjoint_from_the_per_layer_rows(nic, digits):
    n = digits[0].shape[0]
    layer_rows, final_rows = set(nic.layer_rows_.tolist()), set(nic.final_rows_.tolist())
    assert not layer_rows & final_rows
    assert len(layer_rows | final_rows) == n  # fewer than max_train images: all are used
    assert len(final_rows) == round(0.2 * n)


def test_nic_max_train_and_named_layers(model, digits):
    x, y, xt, _ = digits
    det = NIC(layers=["layer2.1", "penultimate"], max_train=200, pca_dims=300).fit(model, x, y)
    assert det.layers_ == ["layer2.1", "penultimate"]
    assert (len(det.layer_rows_), len(det.final_rows_)) == (160, 40)
    # layer2.1 (1024 features) is wider than pca_dims: reduced to at most one dimension per image
    assert det.layer_models_[0].pca.n_components_ == 160
    assert det.layer_models_[1].pca is None  # the penultimate features (256) are narrower
    assert det.score(xt[:5]).shape == (5,)


def test_nic_fit_is_deterministic(model, digits):
    x, y, xt, _ = digits
    scores = [NIC(layers=["pool", "classifier"], max_train=300).fit(
        model, x, y, generator=torch.Generator().manual_seed(3)).score(xt) for _ in range(2)]
    assert torch.equal(scores[0], scores[1])


def test_nic_unknown_layer(model, digits):
    x, y, _, _ = digits
    with pytest.raises(ValueError, match="layers"):
        NIC(layers=["nope"]).fit(model, x, y)


@pytest.mark.parametrize("kwargs, name", [
    ({"layers": []}, "layers"), ({"layers": "pool"}, "layers"), ({"layers": ["pool", "pool"]}, "layers"),
    ({"layers": [""]}, "layers"), ({"pca_dims": 0}, "pca_dims"), ({"gamma": "huge"}, "gamma"),
    ({"gamma": 0.0}, "gamma"), ({"gamma": float("inf")}, "gamma"), ({"max_train": 3}, "max_train"),
    ({"max_train": 2.5}, "max_train"), ({"final_fraction": 1.0}, "final_fraction"),
    ({"final_fraction": 0}, "final_fraction"), ({"batch_size": 0}, "batch_size"),
])
def test_nic_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        NIC(**kwargs)


def test_magnet_default_epochs_give_small_sets_enough_steps():
    """epochs=None: the official 100 on MNIST-sized sets, at least 2400 steps on small ones."""
    assert MagNet().epochs_for(60000) == 100
    assert MagNet().epochs_for(1438) == 400  # 6 batches of 256 per epoch
    assert MagNet(epochs=7).epochs_for(1438) == 7
