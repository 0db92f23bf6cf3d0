"""The Sparta module, swap_relu and per-width save/load."""
import pytest
import torch
from torch import nn

from fastrobust.nn import Sparta, swap_relu
from fastrobust.nn.sparta import SpartaByWidth, load_sparta, save_sparta, sparta_state
from fastrobust.reference import sparta as reference_sparta


class Block(nn.Module):
    """A residual block whose single ReLU module is applied at two places of one width."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(x + self.conv2(self.relu(self.conv1(x))))


class Bottleneckish(nn.Module):
    """One ReLU module applied to two widths, as torchvision's Bottleneck does."""

    def __init__(self, c):
        super().__init__()
        self.reduce = nn.Conv2d(c, c // 2, 1)
        self.expand = nn.Conv2d(c // 2, c, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.expand(self.relu(self.reduce(x))))


def small_net(stages=(8, 16), blocks=1, bottleneck=False):
    layers = [nn.Conv2d(3, stages[0], 3, padding=1), nn.ReLU()]
    prev = stages[0]
    for c in stages:
        if c != prev:
            layers += [nn.Conv2d(prev, c, 1, stride=2), nn.ReLU()]
        layers += [(Bottleneckish(c) if bottleneck else Block(c)) for _ in range(blocks)]
        prev = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, 10), nn.ReLU(), nn.Linear(10, 10)]
    return nn.Sequential(*layers)


def test_module_is_relu_at_init():
    layer = Sparta(5)
    x = torch.randn(2, 5, 7, 3)
    torch.testing.assert_close(layer(x), torch.relu(x), rtol=0, atol=0)
    assert layer.weight.shape == (5, 1, 3, 3) and layer.bias.shape == (5,)
    assert (layer.weight == 0).all() and (layer.bias == 0).all()


def test_module_matches_reference_and_trains():
    layer = Sparta(4, kernel_size=5)
    with torch.no_grad():
        layer.weight.normal_(0, 0.2)
        layer.bias.normal_(0, 0.2)
    x = torch.randn(3, 4, 6, 6, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, reference_sparta(x, layer.weight, layer.bias))
    y.square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.bias.grad is not None and x.grad is not None


def test_module_under_autocast_keeps_fp32_parameters():
    layer = Sparta(4)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(conv(x))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"channels": 0}, "channels must be a positive int"),
        ({"channels": 2.5}, "channels must be a positive int"),
        ({"channels": 4, "kernel_size": 4}, "kernel_size must be a positive odd int"),
    ],
)
def test_module_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Sparta(**kwargs)


def test_module_bad_input_shape():
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4, H, W\)"):
        Sparta(4)(torch.randn(2, 3, 5, 5))


def test_swap_relu_replaces_spatial_relus_only():
    net = small_net()
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    swap_relu(net, x)
    kinds = [type(m) for m in net.modules()]
    # The head's ReLU (2-D input) stays; every 4-D one is now a Sparta.
    assert kinds.count(nn.ReLU) == 1
    assert sorted(m.channels for m in net.modules() if isinstance(m, Sparta)) == [8, 8, 16, 16]
    # Zero-initialised Sparta is ReLU: the swapped model computes the same function.
    torch.testing.assert_close(net(x), before)


def test_swap_relu_handles_one_relu_at_several_widths():
    net = small_net(bottleneck=True)
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    swap_relu(net, x)
    multi = [m for m in net.modules() if isinstance(m, SpartaByWidth)]
    assert len(multi) == 2
    assert sorted(int(k) for k in multi[0].layers) == [4, 8]
    torch.testing.assert_close(net(x), before)


def test_swap_relu_rejects_mixed_rank_relu():
    relu = nn.ReLU()

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.relu = relu
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.relu(self.conv(x)).mean((2, 3))).relu() + self.relu(self.fc(torch.ones(1, 4)))

    with pytest.raises(ValueError, match="applied to both 4-D and other inputs"):
        swap_relu(Mixed(), torch.randn(1, 3, 4, 4))


def test_shared_swap_and_transfer_between_models():
    x = torch.randn(2, 3, 8, 8)
    source = swap_relu(small_net(blocks=1), x, shared=True)
    layers = {id(m): m for m in source.modules() if isinstance(m, Sparta)}
    assert sorted(m.channels for m in layers.values()) == [8, 16]  # one per width
    with torch.no_grad():
        for m in layers.values():
            m.weight.normal_()
            m.bias.normal_()
    state = sparta_state(source)
    # A deeper model with the same stage widths takes the trained Sparta, frozen.
    target = swap_relu(small_net(blocks=3), x, shared=True)
    load_sparta(target, state, freeze=True)
    for m in target.modules():
        if isinstance(m, Sparta):
            torch.testing.assert_close(m.weight, state[m.channels]["weight"])
            assert not m.weight.requires_grad and not m.bias.requires_grad


def test_save_and_load_file(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    source = swap_relu(small_net(), x, shared=True)
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, Sparta):
                m.bias.fill_(0.25)
    path = tmp_path / "sparta.pt"
    save_sparta(source, path)
    target = load_sparta(swap_relu(small_net(), x, shared=True), path)
    for m in target.modules():
        if isinstance(m, Sparta):
            assert (m.bias == 0.25).all() and m.weight.requires_grad


def test_state_needs_one_sparta_per_width():
    net = swap_relu(small_net(), torch.randn(1, 3, 8, 8), shared=False)
    with pytest.raises(ValueError, match="several Sparta layers of width"):
        sparta_state(net)


def test_load_reports_missing_width_and_bad_file(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    small = sparta_state(swap_relu(small_net(stages=(8,)), x, shared=True))
    with pytest.raises(KeyError, match="no Sparta parameters for width 16"):
        load_sparta(swap_relu(small_net(), x, shared=True), small)
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(ValueError, match="not a file written by save_sparta"):
        load_sparta(swap_relu(small_net(), x, shared=True), bad)
