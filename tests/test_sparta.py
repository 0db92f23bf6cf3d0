"""The sparta op on every backend (CPU kernels, CUDA kernels, CUDA device code emulated on
the CPU) against the float64 reference: forward, all gradients, dtypes, layouts, compile,
opcheck, gradcheck, bad inputs."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastrobust
from fastrobust.reference import sparta as reference_sparta
from fastrobust.testing import (
    BACKWARD_TOL,
    CPU,
    FORWARD_TOL,
    REDUCTION_TOL,
    assert_close_to_oracle,
    backends,
    make_sparta_inputs,
)

pytestmark = pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")

# Odd and non-power-of-two sizes, batch 0/1/5, every H, W in {1, 2, 7, 13, 32} and C in
# {1, 3, 64, 96} somewhere. The emulator runs each block's threads as std::threads, so the
# emulated backend gets the shapes of a few blocks; the real backends get all of them. The CUDA
# kernels stage a block's windows one way where the tile is the whole plane and another where
# a plane spans several tiles (17 x 33: 2 x 2 tiles of 16 x 32), so both are among the first four.
SMALL_SHAPES = [(1, 1, 1, 1), (5, 3, 7, 13), (1, 3, 13, 2), (2, 2, 17, 33), (2, 1, 2, 32), (0, 3, 7, 7), (3, 2, 33, 5)]
LARGE_SHAPES = [(1, 64, 32, 32), (5, 96, 13, 7), (5, 64, 2, 1), (1, 96, 7, 32)]
KERNEL_SIZES = [1, 3, 5, 7]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def shapes_for(backend):
    return SMALL_SHAPES if backend.emulated else SMALL_SHAPES + LARGE_SHAPES


def run_forward_backward(op_forward, x, weight, bias, grad_y):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias)]
    y = op_forward(*leaves)
    if y.numel():
        grads = torch.autograd.grad(y, leaves, grad_y)
    else:  # nothing flows back from an empty output
        grads = tuple(torch.zeros_like(t) for t in leaves)
    return y, grads


def oracle(x, weight, bias, grad_y):
    """float64 reference output and gradients."""
    return run_forward_backward(reference_sparta, *(t.double().cpu() for t in (x, weight, bias, grad_y)))


def lowp_torch(x, weight, bias, grad_y):
    """The reference run by PyTorch in the inputs' own dtype (for the 2x error rule)."""
    return run_forward_backward(reference_sparta, x.cpu(), weight.cpu(), bias.cpu(), grad_y.cpu())


def check_against_reference(backend, shape, k, dtype, seed=0, layout=None):
    x, weight, bias = make_sparta_inputs(shape, k, dtype, backend.device, seed=seed)
    grad_y = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    grad_y = grad_y.to(dtype=dtype, device=backend.device)
    if layout is not None:
        x, grad_y = layout(x), layout(grad_y)
    y, grads = run_forward_backward(backend.op("sparta"), x, weight, bias, grad_y)
    y64, grads64 = oracle(x, weight, bias, grad_y)
    lowp = lowp_torch(x, weight, bias, grad_y) if dtype in (torch.float16, torch.bfloat16) else (None, (None,) * 3)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert_close_to_oracle(y, y64, dtype, FORWARD_TOL, lowp[0], name="y")
    for name, g, g64, gl, tol in zip(
        ("grad x", "grad weight", "grad bias"), grads, grads64, lowp[1], (BACKWARD_TOL, REDUCTION_TOL, REDUCTION_TOL)
    ):
        assert g.shape == g64.shape and g.dtype == dtype
        assert_close_to_oracle(g, g64, dtype, tol, gl, name=name)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("k", KERNEL_SIZES)
def test_matches_reference_fp32(backend, k):
    for shape in shapes_for(backend):
        check_against_reference(backend, shape, k, torch.float32)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("k", [3, 7])
def test_matches_reference_other_dtypes(backend, dtype, k):
    for shape in shapes_for(backend)[:4]:
        check_against_reference(backend, shape, k, dtype)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda t: t.contiguous(memory_format=torch.channels_last), id="channels_last"),
        pytest.param(lambda t: t.transpose(2, 3).contiguous().transpose(2, 3), id="transposed"),
        pytest.param(lambda t: torch.cat([t, t], dim=3)[..., ::2], id="strided"),
    ],
)
def test_non_contiguous_inputs(backend, layout):
    check_against_reference(backend, (2, 3, 7, 5), 3, torch.float32, layout=layout)


@pytest.mark.parametrize("backend", backends())
def test_output_is_contiguous_nchw(backend):
    x, w, b = make_sparta_inputs((2, 3, 5, 4), 3, device=backend.device)
    y = backend.op("sparta")(x.contiguous(memory_format=torch.channels_last), w, b)
    assert y.is_contiguous()


@pytest.mark.parametrize("backend", backends())
def test_zero_parameters_give_relu_exactly(backend):
    x, w, b = make_sparta_inputs((2, 5, 6, 7), 3, device=backend.device)
    y = backend.op("sparta")(x, torch.zeros_like(w), torch.zeros_like(b))
    torch.testing.assert_close(y, torch.relu(x), rtol=0, atol=0)


@pytest.mark.parametrize("backend", backends())
def test_extreme_values_stay_finite(backend):
    x, w, b = make_sparta_inputs((1, 2, 9, 9), 3, device=backend.device)
    x = x * 1e4
    w = w * 1e3
    y, grads = run_forward_backward(backend.op("sparta"), x, w, b, torch.ones_like(x))
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0)])
@pytest.mark.parametrize("k", [1, 3])
def test_empty_tensors(backend, shape, k):
    x, w, b = make_sparta_inputs(shape, k, device=backend.device)
    gx, gw, gb = backend.op("_sparta_backward")(torch.empty_like(x), x, w, b)
    assert backend.op("sparta")(x, w, b).shape == shape
    assert gx.shape == x.shape and (gw == 0).all() and (gb == 0).all()


def test_cpu_accepts_any_odd_kernel_size():
    check_against_reference(CPU, (2, 3, 11, 10), 9, torch.float32)


# Planes that are whole 16-float vectors (up to 4 of them, W dividing 16) take their own CPU
# passes (taps are lane permutations of one or two vectors): every arrangement of 16 values, of
# 32, 48 and 64 (rows read across vector boundaries, taps whose pair of vectors is all padding),
# kernels wider than the plane, batches that are not a whole number of the planes taken at a
# time, and k = 9 (past the tap limit, block layout).
VECTOR_PLANE_SHAPES = [
    (33, 5, 4, 4), (3, 2, 2, 8), (2, 3, 8, 2), (5, 2, 1, 16), (1, 3, 16, 1), (6, 1, 4, 4),
    (5, 3, 8, 8), (3, 2, 4, 8), (3, 2, 8, 4), (3, 2, 2, 16), (2, 2, 6, 8), (2, 2, 3, 16),
    (2, 1, 16, 4), (2, 1, 32, 2), (1, 2, 64, 1), (2, 2, 4, 16),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", KERNEL_SIZES + [9])
def test_cpu_planes_in_vectors(dtype, k):
    for shape in VECTOR_PLANE_SHAPES:
        check_against_reference(CPU, shape, k, dtype)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 3, 8, 8), (2, 3, 5, 7), (2, 2, 20, 20), (3, 2, 2, 8), (2, 2, 6, 8), (2, 2, 2, 16), (2, 2, 16, 4)])
def test_non_finite_input_stays_in_its_window(backend, shape):
    """A NaN or inf pixel spoils exactly the outputs and input gradients the reference spoils:
    its own k x k window, never another row's end, another plane or another image."""
    x, w, b = make_sparta_inputs(shape, 3, device=backend.device, seed=7)
    x = x.clone()
    x[1, 1, shape[2] - 1, 0] = float("nan")
    x[0, 2 % shape[1], 0, shape[3] - 1] = float("inf")
    grad_y = torch.ones_like(x)
    y, (gx, _, _) = run_forward_backward(backend.op("sparta"), x, w, b, grad_y)
    y64, (gx64, _, _) = oracle(x, w, b, grad_y)
    for name, got, want in (("y", y, y64), ("grad x", gx, gx64)):
        assert torch.equal(torch.isfinite(got).cpu(), torch.isfinite(want)), name


@pytest.mark.parametrize("backend", backends())
def test_gradcheck_float64(backend):
    op = backend.op("sparta")
    for k in KERNEL_SIZES:
        inputs = make_sparta_inputs((2, 2, 5, 4), k, torch.float64, backend.device, requires_grad=True, seed=k)
        assert torch.autograd.gradcheck(op, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", backends())
def test_opcheck(backend):
    for shape, k in (((2, 3, 5, 4), 3), ((1, 2, 3, 3), 1), ((0, 2, 3, 3), 5)):
        args = make_sparta_inputs(shape, k, torch.float32, backend.device, requires_grad=True)
        torch.library.opcheck(backend.op("sparta").default, args)
        grad_y = torch.randn(shape, device=backend.device)
        torch.library.opcheck(backend.op("_sparta_backward").default, (grad_y, *[a.detach() for a in args]))


def test_torch_compile_fullgraph_parity():
    """The fused op inside a compiled graph (fake kernel + autograd formula) matches eager."""

    def block(x, w, b):
        return fastrobust.ops.sparta(x * 1.5, w, b).sum(dim=1)

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x, w, b = make_sparta_inputs((2, 3, 6, 5), 3, requires_grad=True)
    y_eager = block(x, w, b)
    g_eager = torch.autograd.grad(y_eager.sum(), (x, w, b))
    y_comp = compiled(x, w, b)
    g_comp = torch.autograd.grad(y_comp.sum(), (x, w, b))
    torch.testing.assert_close(y_comp, y_eager)
    for a, e in zip(g_comp, g_eager):
        torch.testing.assert_close(a, e)


def test_torch_compile_inductor():
    """Full compilation (inductor) around the op: the op stays an extern kernel."""
    layer = fastrobust.nn.Sparta(4)
    with torch.no_grad():
        layer.weight.normal_(0, 0.3)
        layer.bias.normal_(0, 0.3)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), layer)
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", backends())
@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    n=st.integers(0, 3),
    c=st.integers(1, 5),
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    k=st.sampled_from(KERNEL_SIZES),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(backend, n, c, h, w, k, seed):
    check_against_reference(backend, (n, c, h, w), k, torch.float32, seed=seed)


# --- bad inputs: every error names the argument ----------------------------------------

def _good(device="cpu"):
    return make_sparta_inputs((2, 3, 5, 5), 3, device=device)


BAD_INPUTS = [
    ("x rank", lambda x, w, b: (x[0], w, b), r"x must be a 4-D tensor"),
    ("x integer", lambda x, w, b: (x.long(), w, b), r"x must have a floating-point dtype|weight must have the dtype"),
    ("weight channels", lambda x, w, b: (x, torch.cat([w, w]), b), r"weight must have shape \(C, 1, k, k\)"),
    ("weight not square", lambda x, w, b: (x, w[..., :1], b), r"weight must have shape"),
    ("weight rank", lambda x, w, b: (x, w[:, 0], b), r"weight must be a 4-D tensor"),
    ("even kernel", lambda x, w, b: (x, w.new_zeros(3, 1, 2, 2), b), r"weight: kernel size must be odd"),
    ("bias shape", lambda x, w, b: (x, w, b[:2]), r"bias must have shape"),
    ("weight dtype", lambda x, w, b: (x, w.double(), b), r"weight must have the dtype of x"),
    ("bias dtype", lambda x, w, b: (x, w, b.double()), r"bias must have the dtype of x"),
]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_name_the_argument(backend, case):
    _, mutate, pattern = case
    args = mutate(*_good(backend.device))
    with pytest.raises(RuntimeError, match=pattern):
        backend.op("sparta")(*args)


@pytest.mark.parametrize("backend", backends())
def test_bad_grad_shape_names_the_argument(backend):
    x, w, b = _good(backend.device)
    with pytest.raises(RuntimeError, match=r"grad_y must have the shape of x"):
        backend.op("_sparta_backward")(x[:1], x, w, b)


@pytest.mark.parametrize("backend", backends())
def test_device_mismatch_names_the_argument(backend):
    x, w, b = _good(backend.device)
    other = "meta"
    with pytest.raises(RuntimeError, match=r"weight must be on the device of x"):
        backend.op("sparta")(x, w.to(other), b)


@pytest.mark.parametrize("backend", [b for b in backends() if b.id != "cpu"])
def test_device_kernel_sizes_are_checked(backend):
    x, _, b = _good(backend.device)
    w = torch.zeros(3, 1, 9, 9, device=backend.device)
    with pytest.raises(RuntimeError, match=r"weight: kernel size 9 has no device kernel"):
        backend.op("sparta")(x, w, b)


def test_functional_api_checks_types():
    x, w, b = _good()
    with pytest.raises((TypeError, RuntimeError)):
        fastrobust.ops.sparta(x, w.numpy(), b)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("k,width", [(5, 1), (7, 2)])
def test_tall_narrow_planes_fit_shared_memory(backend, k, width):
    """float64, k = 5 with W = 1 (or k = 7 with W <= 2) at H >= 400: a tile of 512 outputs and its
    halo once needed ~62 KB of shared memory, which a GPU refuses (the emulator too). The tile
    shrinks until it fits."""
    x, weight, bias = make_sparta_inputs((2, 2, 420, width), k, torch.float64, backend.device, seed=5)
    grad_y = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6)).to(backend.device)
    y, grads = run_forward_backward(backend.op("sparta"), x, weight, bias, grad_y)
    y64, grads64 = oracle(x, weight, bias, grad_y)
    torch.testing.assert_close(y.cpu(), y64, rtol=1e-9, atol=1e-9)
    for got, want in zip(grads, grads64):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", [b for b in backends() if b.id != "cpu"])
def test_weight_gradients_are_deterministic(backend, monkeypatch):
    """The weight and bias gradients sum per-block partial sums in a fixed order: the same bits
    whatever order the blocks run in (once one float atomic per tap and block, whose order the
    GPU's scheduling, or the emulator's seeded block order, decides)."""
    x, weight, bias = make_sparta_inputs((6, 3, 40, 40), 3, torch.float32, backend.device, seed=7)
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(8)).to(backend.device)
    runs = []
    for seed in ("1", "2", "3"):
        monkeypatch.setenv("FASTROBUST_EMU_SEED", seed)  # the emulator's block order; ignored on a GPU
        runs.append(backend.op("_sparta_backward")(grad_y, x, weight, bias))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.skipif(not fastrobust.HAS_EMU, reason="needs the CUDA emulator build (FR_EMULATE_CUDA=1)")
@pytest.mark.parametrize("shape", [(8, 2, 8, 8), (32, 1, 4, 4), (2, 2, 16, 16), (16, 3, 7, 5)], ids=str)
def test_device_windows_keep_bank_conflicts_low(shape):
    """The shared windows' row pitch and plane stride (csrc/cuda/sparta_kernels.cuh, Window)
    put a warp's taps on distinct banks: the cost model's conflict factor of the kernels stays
    near 1 where unpadded rows (pitch = tile width + halo) gave 1.8 to 2.0 on small maps. What
    remains comes from the window loads and the backward's halo columns."""
    from fastrobust import cost_model

    gen = torch.Generator().manual_seed(0)
    x, gy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    w, b = torch.randn(shape[1], 1, 3, 3, generator=gen), torch.randn(shape[1], generator=gen)
    emu = torch.ops.fastrobust_emu
    forward = cost_model.model(lambda: emu.sparta(x, w, b), 64)
    backward = cost_model.model(lambda: emu._sparta_backward(gy, x, w, b), 64)
    assert [k.name for k in forward] == ["sparta::sparta_forward_kernel<float, 3>"]
    assert forward[0].bank_conflict_factor <= 1.35, forward[0].summary()
    assert backward[0].name == "sparta::sparta_backward_kernel<float, 3>"
    assert backward[0].bank_conflict_factor <= 1.7, backward[0].summary()
