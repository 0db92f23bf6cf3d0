"""Second-order gradients through the fused ops (create_graph=True: gradient penalties such as
J-SIGR-style training, double backpropagation): the first backward then runs through the op's
differentiable reference, and gradgradcheck holds in float64 on every backend."""
import pytest
import torch

import fastrobust
from fastrobust.testing import backends

pytestmark = pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")


def f64(*shape, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("backend", backends())
def test_sparta_second_order(backend):
    x, w, b = f64(2, 3, 5, 4), f64(3, 1, 3, 3, scale=0.3, seed=1), f64(3, scale=0.1, seed=2)
    inputs = tuple(t.to(backend.device).requires_grad_(True) for t in (x, w, b))
    assert torch.autograd.gradgradcheck(lambda *t: backend.op("sparta")(*t), inputs)


@pytest.mark.parametrize("backend", backends())
def test_nlm_gaussian_second_order(backend):
    if backend.name == "cuda":
        pytest.skip("float64 NLM runs on the CPU backend only")
    theta, phi, g = f64(1, 2, 3, 3), f64(1, 2, 3, 3, seed=1), f64(1, 3, 3, 3, seed=2)
    inputs = tuple(t.to(backend.device).requires_grad_(True) for t in (theta, phi, g))
    assert torch.autograd.gradgradcheck(lambda *t: backend.op("nlm_gaussian")(*t, 0.7)[0], inputs)


@pytest.mark.parametrize("backend", backends())
def test_cifs_reweight_second_order(backend):
    inputs = tuple(t.to(backend.device).requires_grad_(True) for t in (f64(2, 3, 2, 2), f64(2, 3, seed=1)))
    assert torch.autograd.gradgradcheck(lambda *t: backend.op("cifs_reweight")(*t, 1.5, 2.0), inputs)


def test_first_order_gradients_still_come_from_the_kernels(monkeypatch):
    """Without create_graph the backward kernel runs (not the reference)."""
    import importlib

    sparta_module = importlib.import_module("fastrobust.ops.sparta")
    called = []
    monkeypatch.setattr(sparta_module, "_reference_sparta", lambda *a: called.append(1) or None)
    x = f64(1, 2, 4, 4).requires_grad_(True)
    torch.ops.fastrobust.sparta(x, f64(2, 1, 3, 3, seed=1), f64(2, seed=2)).sum().backward()
    assert called == [] and x.grad is not None


def test_input_gradient_penalty_through_a_model_with_every_fused_layer():
    """A gradient penalty on a model with Sparta activations and a Gaussian NLM block trains its
    parameters (the double backward reaches them through both ops)."""
    from fastrobust.models import create
    from fastrobust.regularizers import input_gradient_penalty

    torch.manual_seed(0)
    model = create("small_cnn", in_channels=1, num_classes=10, width=8, activation="sparta",
                   denoise=("layer2", "gaussian"))
    with torch.no_grad():  # the block starts as the identity (BN gamma 0): open it so its NLM matters
        model.layer2[2].bn.weight.fill_(1.0)
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]), reduction="sum")
    input_gradient_penalty(loss, x).backward()
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Sparta", "NonLocalMeans"} <= kinds, kinds
    # the parameters inside the fused ops' inputs: the Sparta gates and the NLM embeddings
    for name in ("layer1.1.weight", "layer2.1.weight", "layer2.2.nlm.theta.weight", "layer2.2.nlm.phi.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
