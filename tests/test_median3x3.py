"""median3x3 (per-channel 3x3 median filter, reflect padding) on every backend against the
float64 reference: output and window position exactly, gradient, dtypes, ties, NaN, layouts,
empty inputs, determinism, gradcheck, opcheck, compile and bad inputs."""
import pytest
import torch

import fastrobust
from fastrobust.ops.median import median3x3
from fastrobust.reference.median import median3x3 as reference_median
from fastrobust.reference.median import median3x3_unfold_median, median3x3_with_arg
from fastrobust.testing import BACKWARD_TOL, CPU, assert_close_to_oracle, backends

needs_ext = pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")

# (B, C, H, W): a single pixel, H = 1 and W = 1 (the replicate rule), H = W = 2 (every row and
# column a border), odd sizes, many planes, batch 0, and planes split over several CPU tasks.
SHAPES = [(1, 1, 1, 1), (2, 3, 1, 6), (2, 3, 6, 1), (1, 2, 2, 2), (2, 3, 5, 7), (2, 64, 8, 8), (0, 3, 4, 4),
          (2, 16, 48, 48)]
# The emulator runs every block's threads as std::threads: shapes of a few 256-thread blocks.
# (1, 2, 40, 60): several blocks of the staged backward (2048 pixels each), a block's span
# crossing planes and both ends of the tensor.
EMU_SHAPES = [(1, 1, 1, 1), (2, 3, 1, 6), (2, 3, 6, 1), (1, 2, 2, 2), (2, 3, 5, 7), (2, 8, 8, 8), (0, 3, 4, 4),
              (1, 2, 40, 60)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def shapes_for(backend):
    return EMU_SHAPES if backend.emulated else SHAPES


def inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    grad_y = torch.randn(shape, generator=g, dtype=torch.float64)
    return x.to(device, dtype), grad_y.to(device, dtype)


def run(fn, x, grad_y, view=lambda t: t):
    """(y, grad) of y = fn(view(leaf)); the leaf is a copy of x with x's strides."""
    leaf = x.detach().clone().requires_grad_(True)
    y = fn(view(leaf))
    grad = torch.autograd.grad(y, leaf, grad_y) if y.numel() else (torch.zeros_like(leaf),)
    return y, grad[0]


def kernel(backend):
    op = backend.op("median3x3")
    return lambda x: op(x)[0]


def check(backend, x, grad_y, view=lambda t: t):
    """Output and window position equal the oracle's exactly (the selection does no arithmetic,
    and the oracle runs on the same values in float64); the gradient within BACKWARD_TOL."""
    y, grad = run(kernel(backend), x, grad_y, view)
    y64, grad64 = run(reference_median, x.cpu().double(), grad_y.cpu().double(), view)
    x_in = view(x)
    assert y.dtype == x.dtype and y.shape == x_in.shape and y.is_contiguous()
    _, arg = backend.op("median3x3")(x_in)
    _, arg64 = median3x3_with_arg(x_in.cpu().double())
    assert arg.dtype == torch.uint8 and arg.shape == x_in.shape
    assert torch.equal(arg.cpu(), arg64)
    assert torch.equal(y.cpu().double(), y64)
    assert grad.dtype == x.dtype
    assert_close_to_oracle(grad, grad64, x.dtype, BACKWARD_TOL, name="grad x")


@needs_ext
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(backend, dtype):
    for i, shape in enumerate(shapes_for(backend)):
        check(backend, *inputs(shape, dtype, backend.device, seed=i))


@needs_ext
@pytest.mark.parametrize("backend", backends())
def test_grid_stride_and_parallel_tasks(backend):
    """More elements than one launch's threads (4096 blocks x 256): the grid-stride loop."""
    if backend.emulated:
        pytest.skip("too many blocks for the emulator")
    check(backend, *inputs((2, 32, 128, 160), torch.float32, backend.device, seed=7))


@needs_ext
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [1500, 2600])
def test_wide_rows(backend, dtype, width):
    """Rows so wide that the CUDA backward's staged span (a row either side) outgrows shared
    memory: 1500 stages in float32 only, 2600 in neither; those gather from global memory."""
    check(backend, *inputs((1, 1, 3, width), dtype, backend.device, seed=width))


@needs_ext
@pytest.mark.parametrize("backend", backends())
def test_hand_computed_windows(backend):
    """Rules checked without the oracle: reflect padding, ties to the lower window position,
    and the gradient routed to the mirrored pixel."""
    op = backend.op("median3x3")
    # Centre window of a chequerboard: five 1s at positions 0, 2, 4, 6, 8 and four 0s; the
    # 5th smallest pair is (1, position 0).
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]], device=backend.device)[None, None]
    y, arg = op(x)
    assert y[0, 0, 1, 1].item() == 1.0 and arg[0, 0, 1, 1].item() == 0
    # Row [10, 0, 20, 30] of height 1 (rows replicate): output 0 reads columns (1, 0, 1), i.e.
    # values (0, 10, 0) in each row; the pairs sorted are (0,0) (0,2) (0,3) (0,5) (0,6) ...:
    # position 6 (dy = +1, dx = -1), the pixel mirrored from column -1 to column 1.
    x = torch.tensor([10.0, 0.0, 20.0, 30.0], device=backend.device).reshape(1, 1, 1, 4)
    y, arg = op(x)
    assert y.cpu().flatten().tolist() == [0.0, 10.0, 20.0, 20.0]
    assert arg[0, 0, 0, 0].item() == 6
    # Its gradient goes to pixel 1 (the mirror of column -1), not to a padded cell.
    grad_y = torch.tensor([1.0, 0.0, 0.0, 0.0], device=backend.device).reshape(1, 1, 1, 4)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(op(leaf)[0], leaf, grad_y)
    assert grad.cpu().flatten().tolist() == [0.0, 1.0, 0.0, 0.0]


@needs_ext
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties(backend, dtype):
    """Constant and integer-valued images: the position follows the (value, position) rule
    exactly, and with integer upstream gradients (exact sums) the gradient equals the
    reference's bit for bit."""
    shape = (2, 3, 6, 5)
    g = torch.Generator().manual_seed(3)
    grad_y = torch.randint(-4, 5, shape, generator=g).to(backend.device, dtype)
    const = torch.full(shape, 1.5, device=backend.device, dtype=dtype)
    y, arg = backend.op("median3x3")(const)
    assert torch.equal(y, const)
    assert bool((arg == 4).all())  # all nine equal: the 5th pair is the centre
    _, grad = run(kernel(backend), const, grad_y)
    assert torch.equal(grad, grad_y)  # each output selected its own pixel
    for seed in range(3):
        x = torch.randint(0, 3, shape, generator=g).to(backend.device, dtype)
        y, grad = run(kernel(backend), x, grad_y)
        y_ref, grad_ref = run(reference_median, x.cpu().double(), grad_y.cpu().double())
        _, arg = backend.op("median3x3")(x)
        assert torch.equal(arg.cpu(), median3x3_with_arg(x.cpu().double())[1])
        assert torch.equal(y.cpu().double(), y_ref)
        assert torch.equal(grad.cpu().double(), grad_ref)


@needs_ext
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nan_propagates(backend, dtype):
    """One NaN makes every output whose window holds it NaN, selected at the NaN's position,
    with the gradient routed to the NaN pixel; elsewhere outputs stay finite."""
    x, grad_y = inputs((1, 2, 5, 7), dtype, backend.device, seed=5)
    x[0, 1, 2, 3] = float("nan")
    y, arg = backend.op("median3x3")(x)
    nan_mask = torch.zeros(1, 2, 5, 7, dtype=torch.bool)
    nan_mask[0, 1, 1:4, 2:5] = True
    assert torch.equal(torch.isnan(y).cpu(), nan_mask)
    for oy in range(1, 4):
        for ox in range(2, 5):
            assert arg[0, 1, oy, ox].item() == (2 - oy + 1) * 3 + (3 - ox + 1)
    y, grad = run(kernel(backend), x, grad_y)
    y64, grad64 = run(reference_median, x.cpu().double(), grad_y.cpu().double())
    torch.testing.assert_close(y.cpu().double(), y64, equal_nan=True, rtol=0, atol=0)
    assert_close_to_oracle(grad, grad64, dtype, BACKWARD_TOL, name="grad x")
    # The NaN pixel collects the gradients of the nine outputs that selected it.
    expected = grad_y[0, 1, 1:4, 2:5].double().sum()
    torch.testing.assert_close(grad[0, 1, 2, 3].double(), expected.to(grad.device), rtol=2e-3, atol=2e-3)


@needs_ext
@pytest.mark.parametrize("backend", backends())
def test_nan_first_position(backend):
    """Several NaNs in a window: the first one (lowest window position) is selected."""
    x = torch.arange(9.0, device=backend.device).reshape(1, 1, 3, 3)
    x[0, 0, 1, 2] = float("nan")  # window position 5 of the centre output
    x[0, 0, 2, 0] = float("nan")  # window position 6
    _, arg = backend.op("median3x3")(x)
    assert arg[0, 0, 1, 1].item() == 5
    assert torch.equal(arg.cpu(), median3x3_with_arg(x.cpu())[1])


@needs_ext
@pytest.mark.parametrize("backend", backends())
def test_layouts(backend):
    x, grad_y = inputs((2, 5, 6, 7), torch.float32, backend.device, seed=11)
    check(backend, x.contiguous(memory_format=torch.channels_last), grad_y)
    check(backend, x.transpose(2, 3).contiguous().transpose(2, 3), grad_y)
    wide, _ = inputs((2, 5, 6, 14), torch.float32, backend.device, seed=12)
    check(backend, wide, grad_y, view=lambda t: t[..., ::2])  # a strided view of a leaf
    # a non-contiguous upstream gradient (an expanded one, as sum() gives)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(kernel(backend)(leaf).sum(), leaf)
    leaf64 = x.cpu().double().requires_grad_(True)
    (grad64,) = torch.autograd.grad(reference_median(leaf64).sum(), leaf64)
    assert_close_to_oracle(grad, grad64, torch.float32, BACKWARD_TOL, name="grad x")


@needs_ext
@pytest.mark.parametrize("backend", backends())
def test_empty(backend):
    op, backward = backend.op("median3x3"), backend.op("_median3x3_backward")
    for shape in [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0)]:
        x = torch.empty(shape, device=backend.device)
        y, arg = op(x)
        assert y.shape == shape and y.dtype == x.dtype and arg.shape == shape and arg.dtype == torch.uint8
        grad_x = backward(torch.empty(shape, device=backend.device, dtype=torch.float64), arg)
        assert grad_x.shape == shape and grad_x.dtype == torch.float64


@needs_ext
@pytest.mark.parametrize("backend", backends())
def test_deterministic_and_backends_agree(backend):
    """The backward is a gather in a fixed order: repeated runs are bitwise equal, and every
    backend matches the CPU kernel bit for bit (forward and backward)."""
    x, grad_y = inputs((2, 3, 9, 10), torch.float32, backend.device, seed=13)
    x = x.round(decimals=1)  # some ties, so outputs collect several gradients
    first = run(kernel(backend), x, grad_y)
    second = run(kernel(backend), x, grad_y)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    if backend is not CPU and fastrobust.HAS_EXT:
        on_cpu = run(kernel(CPU), x.cpu(), grad_y.cpu())
        assert torch.equal(first[0].cpu(), on_cpu[0])
        assert torch.equal(first[1].cpu(), on_cpu[1])


@needs_ext
@pytest.mark.parametrize("backend", backends())
def test_gradcheck(backend):
    x, _ = inputs((2, 2, 4, 5), torch.float64, backend.device, seed=17)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(kernel(backend), (x,))


@needs_ext
def test_python_api():
    x, grad_y = inputs((2, 3, 5, 6), torch.float64, "cpu", seed=19)
    x.requires_grad_(True)
    y = median3x3(x)
    assert isinstance(y, torch.Tensor) and y.requires_grad
    torch.testing.assert_close(y, reference_median(x.detach()), rtol=0, atol=0)
    assert torch.autograd.gradcheck(median3x3, (x,))
    with torch.no_grad():
        assert not median3x3(x).requires_grad


@needs_ext
def test_opcheck():
    x, grad_y = inputs((2, 3, 4, 5), torch.float32, "cpu", seed=23)
    torch.library.opcheck(torch.ops.fastrobust.median3x3.default, (x.requires_grad_(True),))
    _, arg = torch.ops.fastrobust.median3x3(x.detach())
    torch.library.opcheck(torch.ops.fastrobust._median3x3_backward.default, (grad_y, arg))


@needs_ext
def test_compile_fullgraph():
    x, grad_y = inputs((2, 6, 5, 7), torch.float32, "cpu", seed=29)

    def f(t):
        return median3x3(t) * 2.0

    eager = run(f, x, grad_y)
    compiled = run(torch.compile(f, fullgraph=True, backend="aot_eager"), x, grad_y)
    torch.testing.assert_close(compiled[0], eager[0], rtol=0, atol=0)
    torch.testing.assert_close(compiled[1], eager[1], rtol=0, atol=0)


@needs_ext
@pytest.mark.parametrize("backend", backends())
def test_errors_name_the_argument(backend):
    op, backward = backend.op("median3x3"), backend.op("_median3x3_backward")
    x, grad_y = inputs((2, 3, 4, 4), torch.float32, backend.device)
    _, arg = op(x)
    cases = [
        (op, (x[0],), "x must be a 4-D tensor"),
        (op, (x.long(),), "x must have a floating-point dtype"),
        (backward, (grad_y[:, :, :3], arg), r"grad_y must have the shape of arg \(\[2, 3, 4, 4\]\)"),
        (backward, (grad_y, arg.long()), "arg must have dtype uint8"),
        (backward, (grad_y[0], arg[0]), "grad_y must be a 4-D tensor"),
        (backward, (grad_y.long(), arg), "grad_y must have a floating-point dtype"),
    ]
    for fn, args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            fn(*args)


# ---- the pure-PyTorch reference (runs without the extension) ---------------------------------

def test_reference_agrees_with_unfold_median():
    """Without ties the oracle and the eager unfold + torch.median baseline agree."""
    x, _ = inputs((2, 3, 7, 9), torch.float64, "cpu", seed=31)
    torch.testing.assert_close(reference_median(x), median3x3_unfold_median(x), rtol=0, atol=0)
    x1, _ = inputs((2, 3, 1, 9), torch.float64, "cpu", seed=32)
    torch.testing.assert_close(reference_median(x1), median3x3_unfold_median(x1), rtol=0, atol=0)


def test_reference_rules():
    # reflect: the corner window of a 3x3 ramp reads rows (1, 0, 1) and columns (1, 0, 1)
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    y, arg = median3x3_with_arg(x)
    corner = sorted([4.0, 3.0, 4.0, 1.0, 0.0, 1.0, 4.0, 3.0, 4.0])[4]
    assert y[0, 0, 0, 0].item() == corner
    # ties go to the lower position
    y, arg = median3x3_with_arg(torch.zeros(1, 1, 2, 2))
    assert bool((arg == 4).all())
    with pytest.raises(RuntimeError, match="x must be a 4-D tensor"):
        reference_median(torch.zeros(3, 3))
    with pytest.raises(RuntimeError, match="x must have a floating-point dtype"):
        reference_median(torch.zeros(1, 1, 3, 3, dtype=torch.int64))
