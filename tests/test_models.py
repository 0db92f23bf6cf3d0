"""The model zoo (fastrobust.models) and the Normalize layer."""
import time

import pytest
import torch
from torch import nn

from fastrobust.models import PreActResNet18, SmallCNN, WideResNet, wrn34_10
from fastrobust.nn import Normalize

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", [8, 28, 32])
def test_small_cnn_shapes(size):
    model = SmallCNN(in_channels=1, num_classes=7, width=8)
    assert model(torch.rand(3, 1, size, size)).shape == (3, 7)


def test_small_cnn_on_tiny_inputs():
    assert SmallCNN(in_channels=3, width=4)(torch.rand(2, 3, 1, 1)).shape == (2, 10)


def test_preact_resnet18_shape_and_size():
    model = PreActResNet18(num_classes=10).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert 11.0e6 < n_params(model) < 11.3e6  # 11.17M in the literature


def test_wide_resnet_shapes():
    model = WideResNet(depth=10, widen_factor=2, num_classes=5).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    assert len(model.blocks) == 3  # (10 - 4) / 6 = 1 block per stage


def test_wrn34_10_size():
    model = wrn34_10()
    assert (model.depth, model.widen_factor) == (34, 10)
    assert len(model.blocks) == 15
    assert 46.0e6 < n_params(model) < 46.3e6  # 46.16M in the literature


def test_wide_resnet_dropout_only_in_training():
    model = WideResNet(depth=10, widen_factor=1, dropout=0.5).eval()
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("build", [lambda **kw: SmallCNN(in_channels=3, width=4, **kw),
                                   lambda **kw: PreActResNet18(**kw),
                                   lambda **kw: WideResNet(depth=10, widen_factor=1, **kw)])
def test_mean_std_put_normalize_first(build):
    plain = build().eval()
    normalized = build(mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    normalized.load_state_dict(plain.state_dict(), strict=False)
    assert isinstance(normalized.normalize, Normalize) and isinstance(plain.normalize, nn.Identity)
    x = torch.rand(2, 3, 16, 16)
    expected = plain((x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
    torch.testing.assert_close(normalized(x), expected)


@pytest.mark.parametrize("build, match", [
    (lambda: WideResNet(depth=33), "depth"),
    (lambda: WideResNet(depth=4), "depth"),
    (lambda: WideResNet(depth=34.0), "depth"),
    (lambda: WideResNet(widen_factor=0), "widen_factor"),
    (lambda: WideResNet(dropout=1.0), "dropout"),
    (lambda: PreActResNet18(num_classes=0), "num_classes"),
    (lambda: PreActResNet18(in_channels=True), "in_channels"),
    (lambda: SmallCNN(width=-1), "width"),
    (lambda: SmallCNN(mean=(0.5,)), "mean and std"),
    (lambda: PreActResNet18(mean=(0.5, 0.5), std=(0.2, 0.2)), "in_channels=3"),
])
def test_model_argument_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ----------------------------------------------------------------------------- Normalize


def test_normalize_maths():
    layer = Normalize([0.5, 0.25], [2.0, 0.5])
    x = torch.rand(3, 2, 4, 5)
    expected = torch.stack([(x[:, 0] - 0.5) / 2.0, (x[:, 1] - 0.25) / 0.5], dim=1)
    torch.testing.assert_close(layer(x), expected)


def test_normalize_one_value_for_every_channel_and_any_rank():
    layer = Normalize([0.5], [0.25])
    for x in (torch.rand(4, 3), torch.rand(2, 3, 5), torch.rand(2, 5, 3, 3)):
        torch.testing.assert_close(layer(x), (x - 0.5) / 0.25)


def test_normalize_keeps_channels_last_and_dtype():
    layer = Normalize(CIFAR_MEAN, CIFAR_STD)
    x = torch.rand(2, 3, 8, 8).to(memory_format=torch.channels_last)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, layer(x.contiguous()))
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_normalize_buffers_are_saved_and_gradients_flow():
    layer = Normalize(CIFAR_MEAN, CIFAR_STD)
    assert set(layer.state_dict()) == {"mean", "std"}
    assert not list(layer.parameters())
    x = torch.rand(1, 3, 2, 2, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, (1 / torch.tensor(CIFAR_STD)).view(1, 3, 1, 1).expand(1, 3, 2, 2))


@pytest.mark.parametrize("mean, std, match", [
    ([0.5, 0.5], [0.2], "same length"),
    ([0.5], [0.0], "std must be > 0"),
    ([0.5], [-1.0], "std must be > 0"),
    ([], [], "non-empty"),
    ([[0.5]], [[0.2]], "1-D"),
    (["a"], [0.2], "mean must be"),
    ([float("nan")], [0.2], "mean must be finite"),
])
def test_normalize_argument_errors(mean, std, match):
    with pytest.raises(ValueError, match=match):
        Normalize(mean, std)


def test_normalize_channel_mismatch():
    with pytest.raises(ValueError, match="channels"):
        Normalize(CIFAR_MEAN, CIFAR_STD)(torch.rand(2, 4, 8, 8))


# ----------------------------------------------------------------------------- training


def test_small_cnn_learns_digits_quickly():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixels 0..16 -> [0, 1]
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=10, width=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for _ in range(8):
        for idx in train[torch.randperm(len(train))].split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (model.eval()(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy > 0.9, f"test accuracy {accuracy:.3f}"
    assert seconds < 30, f"training took {seconds:.1f} s"
