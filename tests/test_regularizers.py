"""fastrobust.regularizers: the Jacobian-norm estimate against the exact Frobenius norm, the
input-gradient penalty against its formula, double-backward correctness (gradcheck in float64),
the mask providers, and the argument errors."""
import math

import pytest
import torch
from torch import nn

from fastrobust.regularizers import (
    input_gradient_penalty,
    jacobian_norm,
    perturbation_saliency,
    top_gradient_mask,
)


def small_net(d_in=4, classes=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 6), nn.Tanh(), nn.Linear(6, classes)).double()


def exact_jacobian_norms(net, x):
    """||d net(x_i) / d x_i||_F^2 for each sample, from the full Jacobian."""
    return torch.stack([torch.autograd.functional.jacobian(net, xi.unsqueeze(0)).pow(2).sum() for xi in x])


def test_jacobian_norm_is_unbiased():
    """The mean of many single-projection estimates lies within 3 standard errors of the exact
    ||J||_F^2 of every sample."""
    net = small_net()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    logits = net(x)
    gen = torch.Generator().manual_seed(1)
    draws = torch.stack([jacobian_norm(logits, x, reduction="none", generator=gen, create_graph=False)
                         for _ in range(3000)])
    exact = exact_jacobian_norms(net, x.detach())
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert torch.all((mean - exact).abs() < 3 * se), (mean, exact, se)
    assert torch.all(draws.std(0) > 0)  # a real estimate, not the exact value


def test_jacobian_norm_of_a_linear_map_averages_to_its_frobenius_norm():
    w = torch.randn(7, 3, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    est = jacobian_norm(x @ w.T, x, n_proj=20000, reduction="none", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(est, w.pow(2).sum().expand(2), rtol=0.03, atol=0)


def test_jacobian_norm_reductions_and_projections():
    net = small_net()
    x = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    logits = net(x)
    per = jacobian_norm(logits, x, n_proj=3, reduction="none", generator=torch.Generator().manual_seed(5))
    assert per.shape == (4,)
    torch.testing.assert_close(jacobian_norm(logits, x, n_proj=3, generator=torch.Generator().manual_seed(5)), per.mean())
    torch.testing.assert_close(jacobian_norm(logits, x, n_proj=3, reduction="sum",
                                             generator=torch.Generator().manual_seed(5)), per.sum())
    # the caller's graph survives: the CE term still backpropagates afterwards
    torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long)).backward()


def test_jacobian_norm_double_backward():
    """gradcheck of x -> jacobian_norm(net(x), x) with fixed projections: its gradient is the
    double backward through the vector-Jacobian product."""
    net = small_net()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)

    def f(inp):
        return jacobian_norm(net(inp), inp, n_proj=2, generator=torch.Generator().manual_seed(3))

    assert torch.autograd.gradcheck(f, (x,))


def test_jacobian_norm_trains_the_parameters():
    net = small_net()
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    jacobian_norm(net(x), x).backward()
    # every parameter the Jacobian depends on gets a gradient; the output bias is not among them
    for name, p in net.named_parameters():
        if name == "2.bias":
            assert p.grad is None or p.grad.abs().sum() == 0
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_input_gradient_penalty_matches_its_formula():
    net = small_net()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 4])
    loss = torch.nn.functional.cross_entropy(net(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
    mask = torch.tensor([[1.0, 0.0, 0.5, 0.0]], dtype=torch.float64)
    want = (grad * (1 - mask)).pow(2).sum(1)
    torch.testing.assert_close(input_gradient_penalty(loss, x, mask, reduction="none"), want)
    torch.testing.assert_close(input_gradient_penalty(loss, x), grad.pow(2).sum(1).mean())
    assert input_gradient_penalty(loss, x, torch.ones(1, 4, dtype=torch.float64)).item() == 0.0


def test_input_gradient_penalty_double_backward():
    net = small_net()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 3])
    mask = torch.tensor([[0.0, 1.0, 0.0, 0.25]], dtype=torch.float64)

    def f(inp):
        return input_gradient_penalty(torch.nn.functional.cross_entropy(net(inp), y), inp, mask)

    assert torch.autograd.gradcheck(f, (x,))


def test_a_mask_provider_sees_detached_tensors():
    net = small_net()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    seen = {}

    def provider(inputs, grad):
        seen.update(x=inputs.requires_grad, grad=grad.requires_grad)
        return torch.zeros_like(grad)

    loss = net(x).sum()
    got = input_gradient_penalty(loss, x, provider)
    torch.testing.assert_close(got, input_gradient_penalty(loss, x))
    assert seen == {"x": False, "grad": False}


def test_top_gradient_mask_keeps_the_largest_positions():
    grad = torch.zeros(2, 3, 4, 5)
    grad[0, :, 1, 2] = 5.0  # one position dominant over every channel
    grad[0, 0, 3, 4] = -4.0  # |grad| counts
    grad[1] = torch.arange(60.0).reshape(3, 4, 5)
    mask = top_gradient_mask(0.1)(torch.zeros_like(grad), grad)
    assert mask.shape == (2, 1, 4, 5) and mask.sum((1, 2, 3)).tolist() == [2.0, 2.0]  # ceil(0.1 * 20)
    assert mask[0, 0, 1, 2] == 1 and mask[0, 0, 3, 4] == 1
    assert mask[1, 0, 3, 4] == 1 and mask[1, 0, 3, 3] == 1  # the two largest channel sums
    flat = top_gradient_mask(0.5)(torch.zeros(1, 4), torch.tensor([[0.1, -3.0, 2.0, 0.0]]))
    assert flat.tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_perturbation_saliency_finds_the_evidence():
    """A model that reads the fine pattern of one quarter of the image: the preserve mask keeps
    that quarter (blurring it erases the evidence) and lets the rest blur (the area term)."""
    checker = (torch.arange(8).reshape(8, 1) + torch.arange(8)) % 2 * 2.0 - 1.0

    class Reader(nn.Module):
        def forward(self, x):  # class 1 when the top-left quarter holds the checkerboard
            s = (x[:, 0, :4, :4] * checker[:4, :4]).mean((1, 2))
            return torch.stack([-8 * s, 8 * s], dim=1)

    x = checker.expand(2, 1, 8, 8).clone()
    y = torch.ones(2, dtype=torch.long)
    mask = perturbation_saliency(Reader(), x, y, steps=60, size=4, area=0.5, lr=0.2)
    assert mask.shape == (2, 1, 8, 8) and not mask.requires_grad
    assert mask[:, :, :4, :4].mean() > mask[:, :, 4:, 4:].mean() + 0.1


def test_perturbation_saliency_leaves_the_parameters_alone():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.randn(2, 1, 4, 4), torch.tensor([0, 2])
    perturbation_saliency(net, x, y, steps=2, size=2)
    assert all(p.requires_grad and p.grad is None for p in net.parameters())


@pytest.mark.parametrize("call, message", [
    (lambda x, z: jacobian_norm(z, x.detach()), "x must require grad"),
    (lambda x, z: jacobian_norm(z, x, n_proj=0), "n_proj must be an integer >= 1"),
    (lambda x, z: jacobian_norm(z[0], x), r"logits must be \(B, C\)"),
    (lambda x, z: jacobian_norm(z[:1], x), "same batch size"),
    (lambda x, z: jacobian_norm(z, x, reduction="max"), "reduction must be one of"),
    (lambda x, z: jacobian_norm(torch.zeros(2, 5, requires_grad=True), x), "logits does not depend on x"),
    (lambda x, z: input_gradient_penalty(z, x), "loss must be a scalar"),
    (lambda x, z: input_gradient_penalty(z.sum(), x, torch.ones(3, 4)), "mask must broadcast"),
    (lambda x, z: input_gradient_penalty(z.sum(), x, lambda a, g: 0.5), "mask .the provider's result. must be a torch.Tensor"),
    (lambda x, z: top_gradient_mask(0.0), r"q must be in \(0, 1\]"),
    (lambda x, z: perturbation_saliency(nn.Identity(), x, torch.zeros(2)), r"x must be a batch of images"),
])
def test_bad_arguments_name_themselves(call, message):
    x = torch.randn(2, 4, requires_grad=True)
    z = x @ torch.randn(4, 5)
    with pytest.raises((ValueError, TypeError), match=message):
        call(x, z)
