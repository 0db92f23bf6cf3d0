"""Non-finite values through the ops, on every backend: NaN and inf reach only the outputs
whose inputs contain them, as the eager reference (design.md section 9). These are the hand-made
cases of the reliability findings; tests/test_properties_*.py generate many more."""
import math

import pytest
import torch

import fastrobust
from fastrobust.testing import backends, raises_value_check

pytestmark = pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")
nan, inf = math.nan, math.inf


def nonfinite(t: torch.Tensor) -> torch.Tensor:
    return ~torch.isfinite(t)


# -- sparta ---------------------------------------------------------------------------------

def sparta_reach(bad: torch.Tensor, k: int, steps: int = 1) -> torch.Tensor:
    """Pixels whose k x k window (applied `steps` times) holds a bad pixel of the same image and
    channel: the only places a non-finite input may reach."""
    out = bad.to(torch.float64)
    for _ in range(steps):
        out = torch.nn.functional.max_pool2d(out, k, stride=1, padding=k // 2)
    return out > 0


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("value", [nan, inf, -inf])
@pytest.mark.parametrize("shape,where", [((2, 1, 2, 5), (0, 0, 1, 4)),     # last pixel of image 0
                                         ((2, 2, 3, 20), (1, 1, 0, 0)),    # first pixel, wide rows
                                         ((3, 2, 4, 3), (1, 0, 2, 2))])
@pytest.mark.parametrize("k", [3, 5])
def test_sparta_nonfinite_stays_in_its_window(backend, value, shape, where, k):
    """The CPU kernel once multiplied padding by the neighbouring values (0 * NaN = NaN): a NaN at
    an image's last pixel reached the next image and the start of its own row. Now the output
    and dL/dx are non-finite exactly where the eager float64 reference's are, inside the reach
    of the bad pixel, and equal to it elsewhere."""
    from fastrobust.reference import sparta as reference_sparta

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x[where] = value
    weight = torch.randn(shape[1], 1, k, k, generator=g, dtype=torch.float64)
    bias = torch.zeros(shape[1], dtype=torch.float64)
    bad = torch.zeros(shape, dtype=torch.bool)
    bad[where] = True

    def forward_backward(op, device):
        leaves = [t.to(device).requires_grad_(True) for t in (x, weight, bias)]
        y = op(*leaves)
        grads = torch.autograd.grad(y, leaves, torch.ones_like(y))
        return [t.detach().cpu() for t in (y, *grads)]

    y, grad_x, grad_w, grad_b = forward_backward(backend.op("sparta"), backend.device)
    ry, rgrad_x, _, _ = forward_backward(reference_sparta, "cpu")
    assert not nonfinite(y)[~sparta_reach(bad, k)].any()
    # dL/dx gathers the gradients of the outputs in its window, each from their windows
    assert not nonfinite(grad_x)[~sparta_reach(bad, k, steps=2)].any()
    torch.testing.assert_close(y, ry, equal_nan=True)
    torch.testing.assert_close(grad_x, rgrad_x, equal_nan=True)
    if shape[1] == 2:  # the other channel's weight and bias gradients stay finite
        other = 1 - where[1]
        assert torch.isfinite(grad_w[other]).all() and torch.isfinite(grad_b[other]).all()


# -- nlm_gaussian -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_nlm_gaussian_scale_zero_is_the_mean(backend, dtype):
    """scale = 0 makes every logit 0: y is the mean of g over the positions. The bfloat16 CPU path
    once returned uninitialised memory there (a PyTorch baddbmm with alpha = beta = 0 leaves its
    output untouched), a different number of NaNs on identical calls."""
    g = torch.Generator().manual_seed(1)
    t = torch.randn(1, 17, 8, 9, generator=g).to(dtype)
    v = torch.randn(1, 7, 8, 9, generator=g).to(dtype)
    op = backend.op("nlm_gaussian")
    expected = v.double().mean(dim=(2, 3), keepdim=True).expand(v.shape)
    for _ in range(4):
        leaves = [a.to(backend.device).requires_grad_(True) for a in (t, t.clone(), v)]
        y, lse = op(*leaves, 0.0)
        torch.testing.assert_close(y.double().cpu(), expected, rtol=0.02, atol=0.02)
        torch.testing.assert_close(lse.cpu(), torch.full_like(lse.cpu(), math.log(72)))
        grads = torch.autograd.grad(y, leaves, torch.ones_like(y))
        assert all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("backend", backends())
def test_nlm_gaussian_nonfinite_reach(backend):
    """A NaN in g[b, c, j] reaches y[b, c, :] only; in theta[b, :, i], y[b, :, i] only; in
    phi[b, :, j], all of y[b] (every query attends to every key); never another sample."""
    g = torch.Generator().manual_seed(2)
    theta, phi = (torch.randn(2, 4, 3, 5, generator=g) for _ in range(2))
    values = torch.randn(2, 6, 3, 5, generator=g)
    op = backend.op("nlm_gaussian")
    dev = backend.device

    v = values.clone()
    v[1, 2, 1, 3] = nan
    y = op(theta.to(dev), phi.to(dev), v.to(dev), 0.5)[0].cpu()
    expect = torch.zeros_like(y, dtype=torch.bool)
    expect[1, 2] = True
    assert torch.equal(nonfinite(y), expect)

    q = theta.clone()
    q[0, 1, 2, 4] = inf
    y = op(q.to(dev), phi.to(dev), values.to(dev), 0.5)[0].cpu()
    expect = torch.zeros_like(y, dtype=torch.bool)
    expect[0, :, 2, 4] = True
    assert torch.equal(nonfinite(y), expect)

    k = phi.clone()
    k[1, 0, 0, 0] = nan
    y = op(theta.to(dev), k.to(dev), values.to(dev), 0.5)[0].cpu()
    assert nonfinite(y[1]).all() and torch.isfinite(y[0]).all()


# -- margin_loss --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("kind,targeted", [("cw", False), ("cw", True), ("dlr", False), ("dlr", True)])
@pytest.mark.parametrize("column", [0, 1, 3])
def test_margin_loss_nan_logit_gives_nan_row(backend, kind, targeted, column):
    """A NaN logit anywhere in a row (at the label, the target or another class) makes that row's
    loss and gradient NaN and nothing else: the top-k comparisons once skipped the NaN (a NaN at
    the label gave +inf, elsewhere a finite loss, DLR 0)."""
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5, -1.0], [0.3, -2.0, 1.0, 4.0, 2.0], [2.0, 1.0, 0.0, -1.0, 3.0]])
    labels, targets = torch.tensor([0, 2, 4]), torch.tensor([3, 1, 0])
    logits[1, column] = nan
    dev = backend.device
    args = [logits.to(dev), labels.to(dev), targets.to(dev) if targeted else None, kind, inf]
    loss = backend.op("margin_loss")(*args).cpu()
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
    grad = backend.op("_margin_loss_backward")(torch.ones(3, device=dev), *args).cpu()
    assert torch.isnan(grad[1]).all() and torch.isfinite(grad[[0, 2]]).all()


@pytest.mark.parametrize("backend", backends())
def test_margin_loss_infinite_logits_follow_the_formula(backend):
    """+inf in another class makes the untargeted CW margin +inf; at the label, -inf; both at once,
    NaN (inf - inf), exactly as the formula in float arithmetic."""
    logits = torch.tensor([[inf, 1.0, 0.0], [1.0, inf, 0.0], [inf, inf, 0.0]])
    labels = torch.tensor([1, 1, 1])
    loss = backend.op("margin_loss")(logits.to(backend.device), labels.to(backend.device), None, "cw", inf).cpu()
    assert loss[0] == inf and loss[1] == -inf and torch.isnan(loss[2])


# -- median3x3 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backends())
def test_median_backward_rejects_positions_outside_the_window(backend):
    """arg holds window positions 0..8; the backward once silently returned zeros for 9 and up."""
    grad_y = torch.ones(1, 2, 3, 4, device=backend.device)
    arg = torch.full((1, 2, 3, 4), 4, dtype=torch.uint8, device=backend.device)
    arg[0, 1, 2, 3] = 9
    with raises_value_check(backend, r"arg must hold window positions in \[0, 9\).*got 9",
                            r"arg must hold window positions in \[0, 9\)"):
        backend.op("_median3x3_backward")(grad_y, arg)
