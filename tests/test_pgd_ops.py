"""The PGD engine's fused ops (pgd_step_, pgd_random_init_, pgd_update_best_, apgd_step_) on
every backend against fastrobust.reference.pgd_step, given the same inputs and gradient:
L-inf results are bitwise equal; L2 results (per-row norms summed in another order) agree
to rounding. Plus multi-step invariants, layouts, compile, opcheck and bad inputs."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastrobust
from fastrobust.reference import pgd_step as ref
from fastrobust.testing import CPU, backends

pytestmark = pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")

NORMS = ["linf", "l2"]
# Rows of 32 elements take the CUDA kernels' 16-byte packed path; the others the scalar one.
SHAPES = [(5, 3, 7, 9), (1, 1, 1, 1), (3, 130), (0, 3, 4, 4), (4, 2, 1, 33), (6, 2, 4, 4)]
# rtol/atol of L2 results against the reference (sums of squares in another order).
L2_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def step_inputs(shape, dtype=torch.float32, device="cpu", seed=0, per_row=False, eps=0.1):
    """x0 in [0,1], x a point near x0 (some entries at the box and ball edges), a gradient with
    some exact zeros, eps/alpha scalar or per row."""
    g = torch.Generator().manual_seed(seed)
    n = shape[0]
    x0 = torch.rand(shape, generator=g, dtype=torch.float64)
    x = (x0 + eps * (2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1)).clamp(0, 1)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    grad[torch.rand(shape, generator=g) < 0.1] = 0
    if per_row:
        eps_t = eps * (0.5 + torch.rand(n, generator=g, dtype=torch.float64))
        alpha_t = eps_t / 3
    else:
        eps_t = torch.tensor([eps], dtype=torch.float64)
        alpha_t = torch.tensor([eps / 4], dtype=torch.float64)
    cast = lambda t: t.to(device=device, dtype=dtype)
    acc = lambda t: t.to(device=device, dtype=acc_dtype(dtype))
    return cast(x), cast(x0), cast(grad), acc(eps_t), acc(alpha_t)


def assert_step_equal(actual, expected, norm, dtype):
    if norm == "linf":
        assert torch.equal(actual.cpu(), expected.cpu())
    else:
        tol = L2_TOL[dtype]
        torch.testing.assert_close(actual.cpu().double(), expected.cpu().double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_step_matches_reference(backend, norm, dtype):
    for i, shape in enumerate(SHAPES):
        for per_row, use_active, use_noise, descent in [(False, False, False, False), (True, True, False, False),
                                                        (True, False, True, True), (False, True, True, False)]:
            x, x0, grad, eps, alpha = step_inputs(shape, dtype, backend.device, seed=i, per_row=per_row)
            n = shape[0]
            active = (torch.arange(n, device=backend.device) % 3 != 1) if use_active else None
            noise = (0.01 * torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
                     ).to(device=backend.device, dtype=dtype) if use_noise else None
            expected = ref.pgd_step_(x.clone(), x0, grad, eps, alpha, active, noise, norm, 0.0, 1.0, descent)
            actual = x.clone()
            backend.op("pgd_step_")(actual, x0, grad, eps, alpha, active, noise, norm, 0.0, 1.0, descent)
            assert_step_equal(actual, expected, norm, dtype)
            if active is not None:  # inactive rows are untouched, bit for bit
                assert torch.equal(actual[~active].cpu(), x[~active].cpu())


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("norm", NORMS)
def test_step_box_other_than_unit(backend, norm):
    x, x0, grad, eps, alpha = step_inputs((4, 3, 5, 5), device=backend.device, eps=0.3)
    x0 = x0 * 4 - 2  # box [-2, 2]
    x = x * 4 - 2
    expected = ref.pgd_step_(x.clone(), x0, grad, eps, alpha, None, None, norm, -2.0, 2.0, False)
    backend.op("pgd_step_")(x, x0, grad, eps, alpha, None, None, norm, -2.0, 2.0, False)
    assert_step_equal(x, expected, norm, torch.float32)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("norm", NORMS)
def test_step_channels_last_and_mixed_layouts(backend, norm):
    x, x0, grad, eps, alpha = step_inputs((3, 4, 5, 6), device=backend.device)
    expected = x.clone()
    backend.op("pgd_step_")(expected, x0, grad, eps, alpha, None, None, norm, 0.0, 1.0, False)
    cl = x.clone(memory_format=torch.channels_last)
    # x0 channels_last, grad contiguous: the op reads both correctly
    backend.op("pgd_step_")(cl, x0.contiguous(memory_format=torch.channels_last), grad, eps, alpha, None, None,
                            norm, 0.0, 1.0, False)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert_step_equal(cl, expected, norm, torch.float32)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    rows=st.integers(1, 6),
    row_size=st.integers(1, 70),
    eps=st.floats(0.0, 0.5),
    alpha_frac=st.floats(0.0, 1.5),
    norm=st.sampled_from(NORMS),
    steps=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_multistep_invariants_cpu(rows, row_size, eps, alpha_frac, norm, steps, seed):
    """Whatever the inputs: ||x - x0|| <= eps, x in the box, inactive rows unchanged."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(rows, row_size, generator=g)
    x = x0.clone()
    active = torch.rand(rows, generator=g) < 0.7
    start = x.clone()
    for _ in range(steps):
        grad = torch.randn(rows, row_size, generator=g) * 10.0 ** float(torch.randint(-3, 4, (1,), generator=g))
        fastrobust.ops.pgd_step_(x, x0, grad, eps, eps * alpha_frac, active=active, norm=norm)
    delta = (x - x0).double()
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-6) + 1e-7).all()
    assert (x >= 0).all() and (x <= 1).all()
    assert torch.equal(x[~active], start[~active])


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("momentum", [1.0, 0.75])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_apgd_step_matches_reference(backend, norm, momentum, dtype):
    for i, shape in enumerate(SHAPES):
        x, x0, grad, eps, eta = step_inputs(shape, dtype, backend.device, seed=i, per_row=True, eps=0.2)
        x_prev = (x0 + 0.05 * torch.randn(shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
                  .to(device=backend.device, dtype=dtype)).clamp(0, 1)
        exp_x, exp_prev = ref.apgd_step_(x.clone(), x_prev.clone(), x0, grad, eta * 2, eps, momentum, norm, 0.0, 1.0)
        act_x, act_prev = x.clone(), x_prev.clone()
        backend.op("apgd_step_")(act_x, act_prev, x0, grad, eta * 2, eps, momentum, norm, 0.0, 1.0)
        assert torch.equal(act_prev.cpu(), x.cpu())  # x_prev <- x
        if norm == "linf":  # the momentum mix may be contracted into FMAs: one unit of rounding
            ulp = torch.finfo(dtype).eps
            torch.testing.assert_close(act_x.cpu(), exp_x.cpu(), rtol=0, atol=ulp)
        else:
            assert_step_equal(act_x, exp_x, norm, dtype)


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t whose data starts one element into its storage: not 16-byte
    aligned, so the CUDA kernels take their scalar path."""
    storage = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = storage[1:].view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_packed_and_scalar_paths_agree_bitwise(backend, dtype):
    """Rows of 32 elements: aligned tensors go through the packed element-wise kernels,
    misaligned copies of the same values through the scalar ones; results equal bit for bit."""
    x, x0, grad, eps, alpha = step_inputs((6, 2, 4, 4), dtype, backend.device, per_row=True)
    x_prev = x0.flip(0).contiguous()
    results = []
    for place in (lambda t: t.clone(), misaligned):
        stepped, started, momentum_x, momentum_prev = place(x), place(x), place(x), place(x_prev)
        backend.op("pgd_step_")(stepped, place(x0), place(grad), eps, alpha, None, None, "linf", 0.0, 1.0, False)
        backend.op("pgd_random_init_")(started, place(x0), eps, "linf", 0.0, 1.0, 5, 0)
        backend.op("apgd_step_")(momentum_x, momentum_prev, place(x0), place(grad), alpha, eps, 0.75, "linf", 0.0, 1.0)
        best_x, best_loss, success, new_x, loss, is_adv = best_inputs(6, 32, backend.device, dtype=dtype)
        best_x = place(best_x)
        backend.op("pgd_update_best_")(best_x, best_loss, success, place(new_x), loss, is_adv, "loss")
        results.append([t.cpu() for t in (stepped, started, momentum_x, momentum_prev, best_x, best_loss, success)])
    for name, packed, scalar in zip(["step", "random init", "apgd x", "apgd x_prev", "best x", "best loss",
                                     "success"], *results):
        assert torch.equal(packed, scalar), name


@pytest.mark.skipif(not fastrobust.HAS_EMU, reason="emulated kernels not built")
@pytest.mark.parametrize("dtype, pack", [(torch.float32, 4), (torch.bfloat16, 8), (torch.float64, 2)])
def test_emulated_launches_take_the_packed_path_when_aligned(dtype, pack):
    """The test above compares two different kernels: 16-byte packs for aligned rows of
    whole packs, one element per access otherwise."""
    from fastrobust.kernel_resources import kernel_name, record_launches

    x, x0, grad, eps, alpha = step_inputs((6, 2, 4, 4), dtype, per_row=True)
    step = torch.ops.fastrobust_emu.pgd_step_
    for place, n in ((lambda t: t.clone(), pack), (misaligned, 1)):
        launches = record_launches(lambda: step(place(x), place(x0), place(grad), eps, alpha, None, None, "linf",
                                                0.0, 1.0, False), model_blocks=1)
        assert [kernel_name(launch[0]).rsplit(", ", 1)[1] for launch in launches] == [f"{n}>"]


def best_inputs(n=7, row_size=10, device="cpu", seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    best_x = torch.rand(n, row_size, generator=g).to(device=device, dtype=dtype)
    x = torch.rand(n, row_size, generator=g).to(device=device, dtype=dtype)
    best_loss = torch.randn(n, generator=g).to(device=device, dtype=acc_dtype(dtype))
    loss = torch.randn(n, generator=g).to(device=device, dtype=dtype)
    success = (torch.rand(n, generator=g) < 0.4).to(device)
    is_adv = (torch.rand(n, generator=g) < 0.5).to(device)
    return best_x, best_loss, success, x, loss, is_adv


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("mode", ref.BEST_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_update_best_matches_reference(backend, mode, dtype):
    for seed in range(3):
        best_x, best_loss, success, x, loss, is_adv = best_inputs(device=backend.device, seed=seed, dtype=dtype)
        exp = ref.pgd_update_best_(best_x.clone(), best_loss.clone(), success.clone(), x, loss, is_adv, mode)
        act = (best_x.clone(), best_loss.clone(), success.clone())
        backend.op("pgd_update_best_")(*act, x, loss, is_adv, mode)
        for a, e in zip(act, exp):
            assert torch.equal(a.cpu(), e.cpu())


def test_update_best_modes_by_hand():
    """Rows: (kept loss, kept success) vs (new loss, new is_adv) -> taken in each mode."""
    best_loss = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    success = torch.tensor([False, False, True, True, False, True])
    loss = torch.tensor([2.0, 0.5, 2.0, 0.5, 0.5, 2.0])
    is_adv = torch.tensor([False, True, False, True, False, False])
    expected = {
        "loss": [True, False, True, False, False, True],
        "first_success": [True, True, False, False, False, False],
        "last_success": [True, True, False, True, False, False],
    }
    for mode, taken in expected.items():
        best_x = torch.zeros(6, 2)
        x = torch.ones(6, 2)
        bl, sc = best_loss.clone(), success.clone()
        fastrobust.ops.pgd_update_best_(best_x, bl, sc, x, loss, is_adv, mode)
        assert best_x[:, 0].bool().tolist() == taken, mode
        assert torch.equal(sc, success | is_adv)


@pytest.mark.parametrize("backend", backends())
def test_random_init_linf_is_the_philox_stream(backend):
    """With x0 = 1/2 and eps = 1/2 the start is u itself: the first four words are
    Philox4x32-10's known answer for counter 0, key 0 (Salmon et al. 2011)."""
    x0 = torch.full((1, 8), 0.5, device=backend.device)
    x = torch.empty_like(x0)
    backend.op("pgd_random_init_")(x, x0, torch.tensor([0.5], device=backend.device), "linf", 0.0, 1.0, 0, 0)
    words = (x[0, :4].cpu().double() * 2**24).long().tolist()
    assert words == [0x6627E8D5 >> 8, 0xE169C58D >> 8, 0xBC57AC4C >> 8, 0x9B00DBD8 >> 8]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("norm", NORMS)
def test_random_init_same_on_every_backend(backend, norm):
    x0 = torch.rand(5, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    eps = torch.tensor([0.1, 0.2, 0.3, 0.05, 0.0])
    expected = torch.empty_like(x0)
    CPU.op("pgd_random_init_")(expected, x0, eps, norm, 0.0, 1.0, 1234, 7)
    x = torch.empty_like(x0, device=backend.device)
    backend.op("pgd_random_init_")(x, x0.to(backend.device), eps.to(backend.device), norm, 0.0, 1.0, 1234, 7)
    # same random numbers; the arithmetic on them may be contracted into FMAs on one backend
    torch.testing.assert_close(x.cpu(), expected, rtol=0, atol=2e-7 if norm == "linf" else 1e-6)


def test_random_init_distribution_linf():
    x0 = torch.full((64, 1000), 0.5)
    x = torch.empty_like(x0)
    fastrobust.ops.pgd_random_init_(x, x0, 0.25, "linf", seed=3)
    delta = x - x0
    assert delta.abs().max() <= 0.25
    assert abs(delta.mean()) < 0.003  # std of the mean: 0.25/sqrt(3)/sqrt(64000) ~ 0.0006
    assert abs(delta.var() - 0.25**2 / 3) < 0.002
    other = torch.empty_like(x0)
    fastrobust.ops.pgd_random_init_(other, x0, 0.25, "linf", seed=3)
    assert torch.equal(x, other)
    fastrobust.ops.pgd_random_init_(other, x0, 0.25, "linf", seed=4)
    assert not torch.equal(x, other)
    fastrobust.ops.pgd_random_init_(other, x0, 0.25, "linf", seed=3, offset=1)
    assert not torch.equal(x, other)


def test_random_init_distribution_l2():
    """Uniform in the ball: r^d ~ U(0, 1) for the radius r/eps, and no preferred direction."""
    d = 6
    x0 = torch.full((4000, d), 0.5, dtype=torch.float64)
    x = torch.empty_like(x0)
    fastrobust.ops.pgd_random_init_(x, x0, 0.2, "l2", seed=11)
    delta = x - x0
    r = delta.norm(dim=1) / 0.2
    assert (r <= 1 + 1e-6).all()
    assert abs((r**d).mean() - 0.5) < 0.02
    assert abs((r**d).var() - 1 / 12) < 0.01
    direction = delta / delta.norm(dim=1, keepdim=True)
    assert direction.mean(dim=0).abs().max() < 0.03


def test_random_init_clips_to_box():
    x0 = torch.tensor([[0.0, 1.0, 0.5, 0.99]])
    x = torch.empty_like(x0)
    fastrobust.ops.pgd_random_init_(x, x0, 0.5, "linf", seed=0)
    assert (x >= 0).all() and (x <= 1).all()


# ---- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backends())
def test_step_errors_name_the_argument(backend):
    dev = backend.device
    x, x0, grad, eps, alpha = step_inputs((4, 3, 5, 5), device=dev)
    step = backend.op("pgd_step_")
    cases = [
        ((x, x0[:2], grad, eps, alpha, None, None, "linf", 0.0, 1.0, False), "x0 must have the shape of x"),
        ((x, x0, grad.double(), eps, alpha, None, None, "linf", 0.0, 1.0, False), "grad must have the dtype of x"),
        ((x, x0, grad, torch.ones(3, device=dev), alpha, None, None, "linf", 0.0, 1.0, False), "eps must hold one value or one per row"),
        ((x, x0, grad, eps, alpha, torch.ones(4, device=dev), None, "linf", 0.0, 1.0, False), "active must be a bool tensor"),
        ((x, x0, grad, eps, alpha, None, None, "l1", 0.0, 1.0, False), 'norm must be "linf" or "l2"'),
        ((x, x0, grad, eps, alpha, None, None, "linf", 1.0, 0.0, False), "lo must be <= hi"),
        ((x[:, :, ::2], x0[:, :, ::2], grad[:, :, ::2], eps, alpha, None, None, "linf", 0.0, 1.0, False),
         "x must be contiguous or channels_last"),
        ((x.long(), x0, grad, eps, alpha, None, None, "linf", 0.0, 1.0, False), "x must have a floating-point dtype"),
        ((x, x0, grad, eps.long(), alpha, None, None, "linf", 0.0, 1.0, False), "eps must have a floating-point dtype"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            step(*args)


def test_update_best_and_apgd_errors():
    best_x, best_loss, success, x, loss, is_adv = best_inputs()
    with pytest.raises(RuntimeError, match="best_loss must be Float"):
        torch.ops.fastrobust.pgd_update_best_(best_x, best_loss.double(), success, x, loss, is_adv, "loss")
    with pytest.raises(RuntimeError, match='mode must be "loss"'):
        torch.ops.fastrobust.pgd_update_best_(best_x, best_loss, success, x, loss, is_adv, "best")
    with pytest.raises(RuntimeError, match="success must be a bool tensor"):
        torch.ops.fastrobust.pgd_update_best_(best_x, best_loss, success.float(), x, loss, is_adv, "loss")
    with pytest.raises(RuntimeError, match="x must have the shape of best_x"):
        torch.ops.fastrobust.pgd_update_best_(best_x, best_loss, success, x[:3], loss, is_adv, "loss")
    x, x0, grad, eps, eta = step_inputs((2, 3, 4, 4))
    with pytest.raises(RuntimeError, match="x_prev is updated in place and must have the strides of x"):
        torch.ops.fastrobust.apgd_step_(x, x0.contiguous(memory_format=torch.channels_last), x0, grad, eta, eps,
                                        0.75, "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match=r"momentum must be in \[0, 1\]"):
        torch.ops.fastrobust.apgd_step_(x, x0.clone(), x0, grad, eta, eps, 1.5, "linf", 0.0, 1.0)


def test_python_api_rejects_negative_eps():
    x, x0, grad, _, _ = step_inputs((2, 3))
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        fastrobust.ops.pgd_step_(x, x0, grad, -0.1, 0.01)
    with pytest.raises(ValueError, match="norm must be"):
        fastrobust.ops.pgd_step_(x, x0, grad, 0.1, 0.01, norm=1)


# ---- the op pattern: opcheck, compile, CUDA graphs ---------------------------------------------

def test_opcheck():
    x, x0, grad, eps, alpha = step_inputs((3, 2, 4, 5), per_row=True)
    active = torch.tensor([True, False, True])
    for norm in NORMS:
        torch.library.opcheck(torch.ops.fastrobust.pgd_step_.default,
                              (x.clone(), x0, grad, eps, alpha, active, None, norm, 0.0, 1.0, False))
        torch.library.opcheck(torch.ops.fastrobust.pgd_random_init_.default,
                              (x.clone(), x0, eps, norm, 0.0, 1.0, 5, 0))
        torch.library.opcheck(torch.ops.fastrobust.apgd_step_.default,
                              (x.clone(), x0.clone(), x0, grad, alpha, eps, 0.75, norm, 0.0, 1.0))
    best_x, best_loss, success, xx, loss, is_adv = best_inputs()
    torch.library.opcheck(torch.ops.fastrobust.pgd_update_best_.default,
                          (best_x, best_loss, success, xx, loss, is_adv, "first_success"))


def test_compile_fullgraph_matches_eager():
    def attack_step(x, x0, grad, eps, alpha, best_x, best_loss, success, loss, is_adv):
        fastrobust.ops.pgd_update_best_(best_x, best_loss, success, x, loss, is_adv, "first_success")
        fastrobust.ops.pgd_step_(x, x0, grad, eps, alpha, norm="l2")
        return x

    x, x0, grad, eps, alpha = step_inputs((3, 2, 4, 5), per_row=True)
    best_x, best_loss, success, _, loss, is_adv = best_inputs(n=3, row_size=40)
    best_x = best_x.reshape(x.shape)
    eager = [t.clone() for t in (x, best_x, best_loss, success)]
    attack_step(eager[0], x0, grad, eps, alpha, eager[1], eager[2], eager[3], loss, is_adv)
    compiled = [t.clone() for t in (x, best_x, best_loss, success)]
    torch.compile(attack_step, fullgraph=True, backend="aot_eager")(
        compiled[0], x0, grad, eps, alpha, compiled[1], compiled[2], compiled[3], loss, is_adv)
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_step_replays_in_a_cuda_graph():
    x, x0, grad, eps, alpha = step_inputs((8, 3, 32, 32), device="cuda", per_row=True)
    expected = x.clone()
    for _ in range(3):
        torch.ops.fastrobust.pgd_step_(expected, x0, grad, eps, alpha, None, None, "l2", 0.0, 1.0, False)
    static = x.clone()
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        torch.ops.fastrobust.pgd_step_(static, x0, grad, eps, alpha, None, None, "l2", 0.0, 1.0, False)
    static.copy_(x)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static, expected)
