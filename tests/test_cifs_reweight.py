"""cifs_reweight (feat * scale * softmax(relevance / T) over channels) on every backend
against the float64 reference: output, both gradients, dtypes, layouts, softmax stability,
gradcheck, opcheck, compile and bad inputs."""
import math

import pytest
import torch

import fastrobust
from fastrobust.reference.cifs import cifs_reweight as reference_reweight
from fastrobust.testing import BACKWARD_TOL, FORWARD_TOL, REDUCTION_TOL, assert_close_to_oracle, backends

pytestmark = pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")

# (B, C, H, W): C in {1, 3, 64, 512}, H x W in {1x1, 4x4, 7x5}, batch 0, 1 and 5; chunks of a
# few channels per block (512 x 16) and one channel wider than a warp (7 x 5).
SHAPES = [(1, 1, 1, 1), (5, 3, 4, 4), (2, 64, 7, 5), (2, 512, 4, 4), (0, 3, 2, 2), (3, 512, 1, 1)]
EMU_SHAPES = SHAPES[:5]  # the emulator runs every block's threads as std::threads: a few blocks
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def inputs(shape, dtype, device, seed=0, relevance_scale=3.0, relevance_dtype=None):
    g = torch.Generator().manual_seed(seed)
    b, c = shape[:2]
    feat = torch.randn(shape, generator=g, dtype=torch.float64)
    relevance = relevance_scale * torch.randn(b, c, generator=g, dtype=torch.float64)
    grad_out = torch.randn(shape, generator=g, dtype=torch.float64)
    return (feat.to(device, dtype), relevance.to(device, relevance_dtype or dtype), grad_out.to(device, dtype))


def run(fn, feat, relevance, grad_out, temperature, scale):
    f = feat.detach().clone().requires_grad_(True)
    r = relevance.detach().clone().requires_grad_(True)
    out = fn(f, r, temperature, scale)
    if out.numel():
        grads = torch.autograd.grad(out, (f, r), grad_out)
    else:
        grads = (torch.zeros_like(f), torch.zeros_like(r))
    return out, grads


def check(backend, shape, dtype, temperature=1.0, scale=2.0, seed=0, layout=None, relevance_scale=3.0,
          relevance_dtype=None):
    feat, relevance, grad_out = inputs(shape, dtype, backend.device, seed, relevance_scale, relevance_dtype)
    if layout is not None:
        feat, grad_out = layout(feat), layout(grad_out)
    out, grads = run(backend.op("cifs_reweight"), feat, relevance, grad_out, temperature, scale)
    out64, grads64 = run(reference_reweight, *(t.cpu().double() for t in (feat, relevance, grad_out)),
                         temperature, scale)
    lowp = (None, (None, None))
    if dtype in (torch.float16, torch.bfloat16):
        lowp = run(reference_reweight, feat.cpu(), relevance.cpu(), grad_out.cpu(), temperature, scale)
    assert out.dtype == dtype and out.shape == feat.shape
    assert grads[1].dtype == relevance.dtype
    assert_close_to_oracle(out, out64, dtype, FORWARD_TOL, lowp[0], name="out")
    assert_close_to_oracle(grads[0], grads64[0], dtype, BACKWARD_TOL, lowp[1][0], name="grad feat")
    # the relevance gradient sums over channels and space
    assert_close_to_oracle(grads[1], grads64[1], relevance.dtype, REDUCTION_TOL, lowp[1][1], name="grad relevance")


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(backend, dtype):
    for i, shape in enumerate(EMU_SHAPES if backend.emulated else SHAPES):
        check(backend, shape, dtype, seed=i)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("shape", [(1, 2500, 1, 1), (2, 5, 32, 32), (1, 7, 3, 11), (2, 130, 2, 1), (2, 40, 24, 24),
                                   (1, 1024, 4, 4), (1, 1025, 4, 4)])
def test_channel_chunks_and_warp_runs(backend, shape):
    """The kernels' partitions: more channels than one block takes (2500 x 1x1), a channel
    wider than a warp and fewer channels than warps (32x32), channels of 33 elements whose runs
    cross warp steps, and channel counts that do not divide evenly among the warps. On CUDA the
    backward is one kernel where a sample fits a block (up to 1024 channels and 16384 elements:
    1024 x 4x4 just fits, 1025 x 4x4 does not) and a chunked kernel plus a relevance kernel
    beyond (1025 x 4x4, 40 x 24x24)."""
    check(backend, shape, torch.float32)
    check(backend, shape, torch.float64, seed=1)


@pytest.mark.parametrize("backend", backends())
def test_backward_of_an_empty_map(backend):
    """H W = 0: an empty feature gradient and a zero relevance gradient (d = 0), with and without
    the pooling gradient, as the reference's autograd gives."""
    feat, relevance, grad_out = inputs((2, 3, 0, 4), torch.float32, backend.device)
    backward = backend.op("_cifs_reweight_backward")
    for grad_pooled in (None, torch.ones(2, 3, device=backend.device)):
        grad_feat, grad_relevance = backward(grad_out, feat, relevance, 1.0, 2.0, grad_pooled)
        assert grad_feat.shape == feat.shape
        assert torch.equal(grad_relevance.cpu(), torch.zeros(2, 3))
    r = relevance.detach().cpu().requires_grad_(True)
    reference_reweight(feat.cpu(), r, 1.0, 2.0).sum().backward()
    assert torch.equal(r.grad, torch.zeros(2, 3))


@pytest.mark.parametrize("backend", backends())
def test_temperature_scale_and_layouts(backend):
    check(backend, (3, 5, 4, 3), torch.float32, temperature=0.5, scale=1.0)
    check(backend, (3, 5, 4, 3), torch.float32, temperature=3.0, scale=5.0, seed=1)
    check(backend, (3, 5, 4, 3), torch.float32, layout=lambda t: t.contiguous(memory_format=torch.channels_last))
    check(backend, (3, 5, 4, 3), torch.float32, layout=lambda t: t.transpose(2, 3).contiguous().transpose(2, 3))


@pytest.mark.parametrize("backend", backends())
def test_large_relevance_is_stable(backend):
    """Relevances of magnitude 1e4: the softmax subtracts the row max, nothing overflows."""
    check(backend, (2, 7, 2, 2), torch.float32, relevance_scale=1e4)


@pytest.mark.parametrize("backend", backends())
def test_float32_relevance_with_bfloat16_feature(backend):
    """Under autocast the probe may give float32 relevance for a bfloat16 feature: the gradient
    comes back in the relevance's dtype."""
    check(backend, (2, 6, 3, 3), torch.bfloat16, relevance_dtype=torch.float32)


def test_gradcheck():
    feat, relevance, _ = inputs((2, 4, 3, 2), torch.float64, "cpu")
    feat.requires_grad_(True)
    relevance.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, r: fastrobust.ops.cifs_reweight(f, r, 0.7, 2.0), (feat, relevance))


def test_opcheck():
    feat, relevance, _ = inputs((2, 4, 3, 2), torch.float32, "cpu")
    torch.library.opcheck(torch.ops.fastrobust.cifs_reweight.default,
                          (feat.requires_grad_(True), relevance.requires_grad_(True), 1.0, 2.0))


def test_compile_fullgraph():
    feat, relevance, grad_out = inputs((2, 6, 3, 3), torch.float32, "cpu")

    def f(x, r):
        return fastrobust.ops.cifs_reweight(x, r, 1.0, 2.0)

    eager = run(lambda x, r, t, s: f(x, r), feat, relevance, grad_out, 1.0, 2.0)
    compiled_f = torch.compile(f, fullgraph=True, backend="aot_eager")
    compiled = run(lambda x, r, t, s: compiled_f(x, r), feat, relevance, grad_out, 1.0, 2.0)
    torch.testing.assert_close(compiled[0], eager[0])
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", backends())
def test_errors_name_the_argument(backend):
    op = backend.op("cifs_reweight")
    feat, relevance, _ = inputs((2, 3, 4, 4), torch.float32, backend.device)
    cases = [
        ((feat[0], relevance, 1.0, 2.0), "feat must be a 4-D tensor"),
        ((feat, relevance[:, :2], 1.0, 2.0), r"relevance must have shape \(B, C\) = \(2, 3\)"),
        ((feat, relevance[0], 1.0, 2.0), "relevance must be a 2-D tensor"),
        ((feat.long(), relevance, 1.0, 2.0), "feat must have a floating-point dtype"),
        ((feat, relevance, 0.0, 2.0), "temperature must be a positive number"),
        ((feat, relevance, 1.0, float("nan")), "scale must be finite"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            op(*args)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_backward_adds_the_pooling_gradient(backend, dtype):
    """_cifs_reweight_backward(..., grad_pooled) = the gradients of out and of feat's spatial
    mean together, as a CIFS layer's probe reads it (one pass instead of autograd's sum)."""
    for i, shape in enumerate([(3, 5, 4, 3), (2, 64, 7, 5), (1, 2500, 1, 1)]):
        feat, relevance, grad_out = inputs(shape, dtype, backend.device, seed=i)
        grad_pooled = torch.randn(shape[:2], generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        f64, r64 = (t.cpu().double().requires_grad_(True) for t in (feat, relevance))
        want = torch.autograd.grad([reference_reweight(f64, r64, 1.0, 2.0), f64.mean((2, 3))], [f64, r64],
                                   [grad_out.cpu().double(), grad_pooled])
        got = backend.op("_cifs_reweight_backward")(grad_out, feat, relevance, 1.0, 2.0,
                                                    grad_pooled.to(backend.device, torch.float32))
        assert_close_to_oracle(got[0], want[0], dtype, BACKWARD_TOL, name="grad feat")
        assert_close_to_oracle(got[1], want[1], dtype, REDUCTION_TOL, name="grad relevance")


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("shape", [(3, 1, 4, 4), (2, 1, 80, 80)])
def test_bfloat16_values_round_like_torch(backend, shape):
    """One channel makes the mask exactly `scale`: out and grad_feat are then the float products
    rounded to bfloat16, which must be torch's rounding bit for bit (to nearest even, NaN and
    inf kept), on rows of one block and on a row longer than the CPU kernel's staging blocks."""
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([1.0, 3.0, -1.0, 0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-40, -3e-39])
    feat = torch.randn(shape, generator=g) * 100
    feat.view(-1)[: special.numel()] = special
    feat = feat.bfloat16()
    grad_out = (torch.randn(shape, generator=g) * 1e-3).bfloat16()
    relevance = torch.randn(shape[:2], generator=g).bfloat16()
    scale = 1.0 + 2.0 ** -8  # puts 1.0 * scale exactly halfway between two bfloat16 values
    out, (grad_feat, _) = run(backend.op("cifs_reweight"), *(t.to(backend.device) for t in (feat, relevance, grad_out)),
                              1.0, scale)
    exact = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(out.cpu(), (feat.float() * scale).bfloat16(), **exact)
    torch.testing.assert_close(grad_feat.cpu(), (grad_out.float() * scale).bfloat16(), **exact)


@pytest.mark.skipif(not fastrobust.HAS_EXT, reason="needs the compiled extension")
def test_fake_backward_rejects_a_bad_pooling_gradient_like_the_kernels():
    """The fake kernel (torch.compile, meta tensors) checks grad_pooled as the kernels do."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = torch.ops.fastrobust._cifs_reweight_backward
    with FakeTensorMode():
        feat, relevance, grad_out = torch.empty(2, 3, 2, 2), torch.empty(2, 3), torch.empty(2, 3, 2, 2)
        grad_feat, _ = op(grad_out, feat, relevance, 1.0, 1.0, torch.empty(2, 3, dtype=torch.float64))
        assert grad_feat.shape == feat.shape
        with pytest.raises(RuntimeError, match="grad_pooled must have a floating-point dtype"):
            op(grad_out, feat, relevance, 1.0, 1.0, torch.zeros(2, 3, dtype=torch.long))
        with pytest.raises(RuntimeError, match=r"grad_pooled must have shape \(B, C\) = \(2, 3\)"):
            op(grad_out, feat, relevance, 1.0, 1.0, torch.zeros(3, 2))


@pytest.mark.parametrize("backend", backends())
def test_backward_rejects_a_bad_pooling_gradient(backend):
    feat, relevance, grad_out = inputs((2, 3, 2, 2), torch.float32, backend.device)
    op = backend.op("_cifs_reweight_backward")
    with pytest.raises(RuntimeError, match=r"grad_pooled must have shape \(B, C\) = \(2, 3\)"):
        op(grad_out, feat, relevance, 1.0, 1.0, torch.zeros(3, 2, device=backend.device))
    with pytest.raises(RuntimeError, match="grad_pooled"):
        op(grad_out, feat, relevance, 1.0, 1.0, torch.zeros(2, 3, dtype=torch.long, device=backend.device))


# -- _cifs_pool: the layer's global average pooling on the CPU ------------------------------

# (B, C, H, W): rows (B C) in whole blocks of eight and not, H W a multiple of eight (16, 24)
# and not (49, 35, 1), the last row's tail at the end of the array (8 x 2 rows of 49), empty.
POOL_SHAPES = [(32, 512, 4, 4), (3, 5, 7, 7), (8, 2, 7, 7), (2, 3, 5, 7), (4, 2, 3, 8), (1, 1, 1, 1), (0, 3, 2, 2)]
# float32 sums (float64 for float64; N(0, 1) values, a sum's error some 1e-7), one division,
# one rounding: within half an ulp of the dtype (relative), plus the sum's error (absolute)
POOL_RTOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
POOL_ATOL = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 1e-6, torch.float16: 1e-6}


def pool_layouts(feat):
    return {"contiguous": feat, "channels_last": feat.contiguous(memory_format=torch.channels_last),
            "strided": feat.transpose(2, 3)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_pool_is_the_spatial_mean(shape, dtype):
    feat = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    for layout, x in pool_layouts(feat).items():
        got = torch.ops.fastrobust._cifs_pool(x)
        assert got.dtype == dtype and got.shape == shape[:2] and got.is_contiguous(), layout
        want = x.double().mean((2, 3))
        torch.testing.assert_close(got.double(), want, rtol=POOL_RTOL[dtype], atol=POOL_ATOL[dtype],
                                   msg=lambda m: f"{layout}: {m}")


def test_pool_of_an_empty_map_is_nan_as_torch():
    got = torch.ops.fastrobust._cifs_pool(torch.ones(2, 3, 0, 4))
    assert got.shape == (2, 3) and bool(got.isnan().all())


def test_pool_rejects_what_is_not_a_floating_4d_feature():
    op = torch.ops.fastrobust._cifs_pool
    with pytest.raises(RuntimeError, match="feat must be a 4-D tensor"):
        op(torch.ones(2, 3, 4))
    with pytest.raises(RuntimeError, match="feat must have a floating-point dtype"):
        op(torch.ones(2, 3, 4, 4, dtype=torch.int64))


def test_pool_opcheck():
    feat = torch.randn(3, 5, 7, 7)
    torch.library.opcheck(torch.ops.fastrobust._cifs_pool.default, (feat,))


def test_global_pool_runs_the_kernel_only_where_no_graph_is_recorded():
    """fastrobust.ops.cifs_layer.global_pool: the kernel under no_grad and for a feature that
    needs no gradient (its values bit for bit), torch's differentiable reduction otherwise."""
    from fastrobust.ops.cifs_layer import global_pool

    feat = torch.randn(4, 6, 3, 5)
    kernel = torch.ops.fastrobust._cifs_pool(feat)
    assert torch.equal(global_pool(feat), kernel)
    with torch.no_grad():
        assert torch.equal(global_pool(feat.requires_grad_(True)), kernel)
    pooled = global_pool(feat)
    assert pooled.grad_fn is not None
    (grad,) = torch.autograd.grad(pooled.sum(), feat)
    torch.testing.assert_close(grad, torch.full_like(feat, 1 / 15))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_does_not_depend_on_the_thread_count(dtype):
    """The rows are split between threads in whole groups of the AVX2 path's eight, so each
    row is summed in the same order whatever the split."""
    feat = torch.randn(3, 2731, 1, 7, generator=torch.Generator().manual_seed(2)).to(dtype)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.fastrobust._cifs_pool(feat)
        torch.set_num_threads(3)
        several = torch.ops.fastrobust._cifs_pool(feat)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, several)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_pool_keeps_nan_and_inf_to_their_own_rows(dtype):
    """A row's last few values are loaded eight at a time with the next row's first ones masked
    off: NaN and inf at the start of a row reach that row's mean only (7x7 rows: 49 values)."""
    feat = torch.randn(2, 12, 7, 7, generator=torch.Generator().manual_seed(3)).to(dtype)
    flat = feat.view(24, 49)
    flat[1, 0], flat[5, 0], flat[9, 0], flat[9, 1] = math.nan, math.inf, math.inf, -math.inf
    got = torch.ops.fastrobust._cifs_pool(feat).view(24)
    want = feat.double().mean((2, 3)).view(24)
    assert got[1].isnan() and got[5] == math.inf and got[9].isnan()
    finite = want.isfinite()
    assert int(finite.sum()) == 21 and bool(got[finite].isfinite().all())
    torch.testing.assert_close(got[finite].double(), want[finite], rtol=POOL_RTOL[dtype], atol=POOL_ATOL[dtype])
