"""TisODE pieces: fastrobust.nn.ODEBlock (the built-in Euler against a hand-written loop and
torchdiffeq, the steady-state loss against its sum, torchdiffeq's methods on a linear ODE),
the ode_net models and the tisode recipe."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastrobust.models import create
from fastrobust.nn import ConcatODEFunc, ODEBlock, TisODEFunc
from fastrobust.nn.ode import cuda_graphed
from fastrobust.train.recipes import StepContext, create_recipe
from fastrobust.train.recipes.tisode import gaussian_noise, steady_state_loss


def tiny_func(seed=0, channels=4):
    torch.manual_seed(seed)
    return TisODEFunc(channels, groups=2).double()


def z0(seed=1, channels=4):
    return torch.randn(2, channels, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_euler_block_is_the_hand_written_loop():
    func = tiny_func()
    block = ODEBlock(func, t_end=1.0, step=0.05).eval()
    z = z0()
    want = z.clone()
    for _ in range(20):
        want = want + 0.05 * func(None, want)
    torch.testing.assert_close(block(z), want, rtol=0, atol=1e-14)
    assert block.steady_state_loss is None


def test_steady_state_loss_sums_h_abs_f_over_the_window():
    func = tiny_func()
    block = ODEBlock(func, t_end=1.0, step=0.1, steady_state=(0.5, 1.3)).train()
    z = z0()
    out = block(z)
    traj, acc = z.clone(), torch.zeros_like(z)
    for k in range(13):  # t_k = 0, 0.1, ..., 1.2; the window takes t_k in [0.5, 1.3)
        f = func(None, traj)
        if k >= 5:
            acc = acc + 0.1 * f.abs()
        traj = traj + 0.1 * f
        if k == 9:
            z_end = traj
    torch.testing.assert_close(out, z_end, rtol=0, atol=1e-14)
    torch.testing.assert_close(block.steady_state_loss, acc.mean(), rtol=1e-12, atol=0)
    block.eval()
    block(z)
    assert block.steady_state_loss is None  # train mode only


def test_euler_agrees_with_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = tiny_func()
    z = z0()
    want = torchdiffeq.odeint(func, z, torch.tensor([0.0, 1.0], dtype=torch.float64), method="euler",
                              options={"step_size": 0.05})[-1]
    torch.testing.assert_close(ODEBlock(func, step=0.05)(z), want, rtol=1e-12, atol=1e-12)


def run_with_grads(block, z):
    """The block's output, steady-state loss and the gradients of out.sum() (+ the loss) with
    respect to z and every parameter."""
    out = block(z)
    ss = block.steady_state_loss
    loss = out.sum() if ss is None else out.sum() + ss
    return out, ss, torch.autograd.grad(loss, [z, *block.parameters()])


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train-steady-state"])
def test_compiled_euler_block_is_one_graph_and_equals_eager(train, backend):
    """torch.compile(fullgraph=True) (a graph break raises) of the Euler block: the same output,
    steady-state loss and gradients as eager, in eval mode and in train mode with the window."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = ODEBlock(TisODEFunc(4, groups=2), steady_state=(0.9, 1.5)).train(train)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    got_out, got_ss, got_grads = run_with_grads(compiled, z)
    want_out, want_ss, want_grads = run_with_grads(block, z)
    assert (got_ss is None) == (want_ss is None) == (not train)
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-5)
    if train:
        torch.testing.assert_close(got_ss, want_ss, rtol=1e-5, atol=1e-6)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_cuda_graphed_rejects_what_a_capture_gets_wrong():
    block = ODEBlock(TisODEFunc(4, groups=2), steady_state=(0.9, 1.5))
    with pytest.raises(ValueError, match="steady_state"):  # train mode (the default) with the window
        cuda_graphed(block.train(), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="example_input must be a CUDA tensor, got cpu"):
        cuda_graphed(block.eval(), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="method='euler'"):
        cuda_graphed(ODEBlock(TisODEFunc(4, groups=2), method="rk4").eval(), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="ODEBlock"):
        cuda_graphed(TisODEFunc(4, groups=2), torch.randn(2, 4, 3, 3))


@pytest.mark.cuda
@pytest.mark.parametrize("train", [False, True], ids=["eval-with-window", "train-no-window"])
def test_cuda_graphed_block_replays_the_eager_numbers(train):
    """Captured once, replayed on new inputs: the eager block's output and gradients (of the
    input and every parameter) to rounding."""
    import copy

    torch.manual_seed(0)
    block = ODEBlock(TisODEFunc(8, groups=4), steady_state=None if train else (0.9, 1.5)).cuda().train(train)
    eager = copy.deepcopy(block)
    graphed = cuda_graphed(block, torch.randn(4, 8, 5, 5, device="cuda", requires_grad=True))
    for _ in range(2):
        z = torch.randn(4, 8, 5, 5, device="cuda", requires_grad=True)
        w = torch.randn(4, 8, 5, 5, device="cuda")
        out = graphed(z)
        got = [out.clone()] + [g.clone() for g in torch.autograd.grad((out * w).sum(), [z, *graphed.parameters()])]
        want_out = eager(z)
        want = [want_out, *torch.autograd.grad((want_out * w).sum(), [z, *eager.parameters()])]
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert graphed.steady_state_loss is None


class Decay(nn.Module):
    def forward(self, t, z):
        return -z


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_torchdiffeq_methods_and_their_steady_state_on_a_linear_ode(method):
    pytest.importorskip("torchdiffeq")
    z = torch.rand(3, 2, dtype=torch.float64) + 0.5
    block = ODEBlock(Decay(), method=method, step=0.01, rtol=1e-8, atol=1e-8, steady_state=(0.5, 2.0)).train()
    out = block(z)
    torch.testing.assert_close(out, z * math.exp(-1.0), rtol=1e-6, atol=1e-7)
    # the integral of |dz/dt| = z0 e^{-t} over [0.5, 2]
    torch.testing.assert_close(block.steady_state_loss, (z * (math.exp(-0.5) - math.exp(-2.0))).mean(),
                               rtol=1e-6, atol=1e-7)


class ScaledDecay(nn.Module):
    def __init__(self):
        super().__init__()
        self.rate = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))

    def forward(self, t, z):
        return -self.rate * z


def test_adjoint_gradients_match_backprop():
    """On a smooth, stable ODE the adjoint's gradients (the continuous adjoint solved backward)
    agree with backpropagation through the solver's steps."""
    pytest.importorskip("torchdiffeq")
    func = ScaledDecay()
    z = (torch.rand(3, 2, dtype=torch.float64) + 0.5).requires_grad_(True)
    grads = []
    for adjoint in (False, True):
        block = ODEBlock(func, method="dopri5", rtol=1e-10, atol=1e-10, adjoint=adjoint).eval()
        grads.append(torch.autograd.grad(block(z).pow(2).sum(), [z, func.rate]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    # d/d rate of sum (z0 e^{-rate})^2 = -2 sum z0^2 e^{-2 rate}
    torch.testing.assert_close(grads[1][1], -2 * (z.detach() ** 2).sum() * math.exp(-1.4), rtol=1e-6, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(t_end=0.0), "t_end must be > 0, got 0"),
    (dict(step=-0.1), "step must be > 0, got -0.1"),
    (dict(steady_state=(1.5, 0.9)), "steady_state must be None or"),
    (dict(steady_state=(0.1,)), "steady_state must be None or"),
    (dict(adjoint=True), "adjoint"),
    (dict(method=""), "method must be"),
])
def test_block_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ODEBlock(Decay(), **kwargs)


def test_vanilla_function_sees_the_time():
    torch.manual_seed(0)
    func = ConcatODEFunc(4, groups=2).double()
    z = z0()
    assert not torch.equal(func(torch.tensor(0.0, dtype=torch.float64), z), func(torch.tensor(0.7, dtype=torch.float64), z))


@pytest.mark.parametrize("ode, block_kind", [("tisode", ODEBlock), ("vanilla", ODEBlock), ("none", nn.Module)])
def test_ode_net_models(ode, block_kind):
    model = create("ode_net", ode=ode, width=16)
    assert isinstance(model.block, block_kind)
    for size in (8, 28, 32):
        channels = 3 if size == 32 else 1
        m = create("ode_net", ode=ode, width=16, in_channels=channels, num_classes=7)
        assert m(torch.rand(2, channels, size, size)).shape == (2, 7)
    if ode != "none":
        assert model.block.step == {"tisode": 0.05, "vanilla": 0.1}[ode]
        assert (model.block.steady_state is not None) == (ode == "tisode")


@pytest.mark.parametrize("options, message", [
    (dict(ode="neural"), "ode must be one of"),
    (dict(activation="sparta"), "fixed"),
    (dict(width=0), "width"),
])
def test_ode_net_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        create("ode_net", **options)


def ctx(epoch, seed=0):
    return StepContext(epoch=epoch, epochs=10, step=0, steps_per_epoch=1, generator=torch.Generator().manual_seed(seed))


def test_tisode_loss_adds_the_steady_state_from_its_epoch():
    torch.manual_seed(0)
    model = create("ode_net", width=8).train()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    recipe = create_recipe("tisode", weight=0.5, ss_from_epoch=2)
    for epoch, with_ss in ((1, False), (2, True)):
        out = recipe.batch_loss(model, x, y, ctx(epoch))
        noisy = gaussian_noise(x, torch.Generator().manual_seed(0), 0.5, recipe.noise_sigmas)
        logits = model(noisy)
        natural = F.cross_entropy(logits, y)
        ss = steady_state_loss(model, natural)
        assert ss > 0
        torch.testing.assert_close(out.loss, natural + 0.5 * ss if with_ss else natural)


def test_gaussian_noise_is_per_sample_and_clipped():
    x = torch.full((200, 1, 2, 2), 0.5)
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(gaussian_noise(x, gen, 0.0, (0.2,)), x)
    noisy = gaussian_noise(x, gen, 0.5, (50 / 255, 100 / 255))
    changed = (noisy != x).flatten(1).any(1)
    assert 60 < int(changed.sum()) < 140 and noisy.min() >= 0 and noisy.max() <= 1


@pytest.mark.parametrize("options, message", [
    (dict(weight=-1.0), "weight"), (dict(ss_from_epoch=-1), "ss_from_epoch"),
    (dict(noise_probability=1.5), "noise_probability"), (dict(noise_sigmas=()), "noise_sigmas"),
])
def test_tisode_recipe_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        create_recipe("tisode", **options)


def test_tisode_trains_an_ode_net_on_digits_above_chance():
    from fastrobust.data import load_digits

    (x, y), (xt, yt) = load_digits("train"), load_digits("test")
    torch.manual_seed(0)
    model = create("ode_net", width=16).train()
    recipe = create_recipe("tisode", ss_from_epoch=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(3):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 128):
            rows = order[i:i + 128]
            out = recipe.batch_loss(model, x[rows], y[rows], StepContext(epoch, 3, 0, 1, gen))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(xt).argmax(1) == yt).float().mean() > 0.5
