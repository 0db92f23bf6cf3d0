"""fastrobust.eval.saliency: the input-gradient map against the closed form of a linear model
(float64), its range and the zero-gradient case, that models keep their mode and parameters
get no .grad, the figure (grayscale and RGB, with and without the perturbation mask) and the
argument errors."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastrobust.eval import input_gradient_saliency, saliency_figure


def linear_model(in_shape=(1, 4, 4), classes=3, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes)).to(dtype)


def closed_form(model, x, y):
    """For logits = W x + b: d CE / dx = W^T (softmax(logits) - onehot(y)) per image; |.| max
    over channels, divided by each image's maximum."""
    lin = model[1]
    logits = x.flatten(1) @ lin.weight.T + lin.bias
    delta = logits.softmax(1) - F.one_hot(y, logits.shape[1]).to(x.dtype)
    grad = (delta @ lin.weight).reshape(x.shape).abs().amax(1, keepdim=True)
    return grad / grad.amax((2, 3), keepdim=True)


@pytest.mark.parametrize("channels", [1, 3])
def test_matches_the_closed_form_of_a_linear_model(channels):
    model = linear_model((channels, 4, 4))
    x = torch.rand(5, channels, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    s = input_gradient_saliency(model, x, y)
    assert s.shape == (5, 1, 4, 4) and s.dtype == torch.float64 and not s.requires_grad
    torch.testing.assert_close(s, closed_form(model, x, y), atol=1e-6, rtol=0)


def test_maps_lie_in_unit_interval_with_peak_one():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    s = input_gradient_saliency(model, x, y)
    assert s.min() >= 0 and s.max() <= 1
    torch.testing.assert_close(s.amax((1, 2, 3)), torch.ones(4))


def test_zero_gradient_gives_zeros_without_nan():
    model = linear_model()
    with torch.no_grad():
        model[1].weight.zero_()
    x, y = torch.rand(3, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2])
    s = input_gradient_saliency(model, x, y)
    assert torch.isfinite(s).all() and (s == 0).all()


def test_output_independent_of_x_gives_zeros():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return self.bias.expand(x.shape[0], 3)

    s = input_gradient_saliency(Constant(), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    assert (s == 0).all()


@pytest.mark.parametrize("training", [True, False])
def test_mode_unchanged_and_no_parameter_grad(training):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train(training)
    input_gradient_saliency(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 2]))
    assert all(m.training == training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_tuple_output_uses_the_logits():
    model = linear_model()

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x), {"extra": 1}

    x, y = torch.rand(2, 1, 4, 4, dtype=torch.float64), torch.tensor([1, 2])
    torch.testing.assert_close(input_gradient_saliency(Pair(), x, y), input_gradient_saliency(model, x, y))


# --- the figure ---------------------------------------------------------------------------------

def small_cnn(channels, classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, classes))


@pytest.mark.parametrize("perturbation", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_figure_writes_a_png(tmp_path, channels, perturbation):
    pytest.importorskip("matplotlib")
    standard, robust = small_cnn(channels, seed=0), small_cnn(channels, seed=1)
    robust[1].eval()  # a mixed-mode model: its submodule flags must come back as they were
    models = OrderedDict([("standard", standard), ("J-SIGR-style", robust)])
    flags = {name: [m.training for m in model.modules()] for name, model in models.items()}
    x, y = torch.rand(3, channels, 8, 8), torch.tensor([0, 1, 3])
    out = saliency_figure(models, x, y, tmp_path / "sub" / "saliency.png", perturbation=perturbation, steps=2,
                          title="test figure")
    data = (tmp_path / "sub" / "saliency.png").read_bytes()
    assert out == str(tmp_path / "sub" / "saliency.png")
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert {name: [m.training for m in model.modules()] for name, model in models.items()} == flags
    assert all(p.grad is None for model in models.values() for p in model.parameters())


def test_figure_restores_eval_mode(tmp_path):
    pytest.importorskip("matplotlib")
    model = small_cnn(1).eval()
    saliency_figure({"m": model}, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), tmp_path / "s.png",
                    perturbation=False)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("kwargs, message", [
    (dict(models={}), "models is empty"),
    (dict(models=[small_cnn(1)]), "models must be a mapping"),
    (dict(models={"a": small_cnn(1), "b": lambda x: x}), r"models\['b'\] must be an nn.Module"),
    (dict(x=torch.rand(2, 8, 8)), "x must be a batch of images"),
    (dict(x=torch.rand(2, 2, 8, 8)), "x must have 1 .grayscale. or 3 .RGB. channels"),
    (dict(y=torch.tensor([0, 1, 2])), r"y must have shape \(2,\)"),
    (dict(y=torch.tensor([0.0, 1.0])), "y must hold integer class labels"),
    (dict(x=torch.rand(33, 1, 8, 8), y=torch.zeros(33, dtype=torch.long)), "x has 33 images, too many rows"),
    (dict(steps=0), "steps must be an integer >= 1"),
])
def test_figure_argument_errors(tmp_path, kwargs, message):
    args = dict(models={"m": small_cnn(1)}, x=torch.rand(2, 1, 8, 8), y=torch.tensor([0, 1]))
    args.update(kwargs)
    steps = args.pop("steps", 2)
    with pytest.raises(ValueError, match=message):
        saliency_figure(args["models"], args["x"], args["y"], tmp_path / "s.png", steps=steps)
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("x, y, message", [
    (torch.rand(2, 16), torch.tensor([0, 1]), "x must be a batch of images"),
    (torch.rand(2, 1, 4, 4), torch.tensor([0]), r"y must have shape \(2,\)"),
])
def test_saliency_argument_errors(x, y, message):
    with pytest.raises(ValueError, match=message):
        input_gradient_saliency(linear_model(dtype=torch.float32), x, y)
