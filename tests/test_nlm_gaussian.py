"""nlm_gaussian (softmax non-local means, flash-style) on every backend against the float64
materialised reference: output, the three gradients, the saved log-sum-exp, dtypes, layouts,
softmax stability, gradcheck, opcheck, compile, autocast and bad inputs."""
import math

import pytest
import torch

import fastrobust
from fastrobust.ops.nlm import nlm_gaussian
from fastrobust.reference import nlm as reference
from fastrobust.testing import CUDA_EMU, FORWARD_TOL, REDUCTION_TOL, assert_close_to_oracle, backends

pytestmark = pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")

# (B, d, C, H, W): N = H * W from 1 to 33 x 33, mostly not multiples of the 32-position tile;
# d in {1, 8, 32, 96, 256}, C in {1, 3, 64, 160, 512}; batch 0, 1 and 3.
SHAPES = [
    (1, 1, 1, 1, 1),
    (3, 8, 3, 5, 7),
    (1, 32, 64, 8, 8),
    (2, 1, 64, 17, 3),
    (3, 96, 160, 33, 33),
    (1, 256, 512, 6, 6),
    (1, 256, 1, 10, 10),
    (0, 8, 3, 4, 4),
]
# The emulator runs each block's 128 threads as std::threads: a few tiles per sample.
EMU_SHAPES = [
    (1, 1, 1, 1, 1),
    (3, 8, 3, 5, 7),
    (1, 32, 64, 8, 8),
    (2, 96, 160, 6, 6),
    (1, 1, 3, 33, 1),
    (1, 24, 70, 9, 8),  # two 64-query blocks of the tensor-core forward; 9 of its 16 column tiles
    (2, 8, 200, 3, 3),  # D_i in 3 uneven groups of channels (67, 67, 66)
    # tensor cores: the wide forward's block of 512 channels (two 64-query blocks, 3 key tiles);
    # dg and dphi in one kernel of 32-key blocks
    (1, 8, 300, 9, 8),
    # the wide forward's and dg's 1024-column slice of 32-position blocks, d in 2 chunks; dg and
    # dphi from separate kernels (C over 512)
    (1, 40, 600, 5, 7),
    (1, 8, 1100, 2, 3),  # tensor-core forward and dg: two 1024-column slices (1024 + 76)
    (1, 300, 5, 4, 4),  # tensor-core dphi and dtheta: the wide kernel's 512 columns
    (1, 600, 4, 3, 3),  # tensor-core dphi and dtheta: the wide kernel's 1024-column slice
    (1, 264, 130, 3, 5),  # dg and dphi from separate kernels (d over 256); tf32's dg on the 256-column wide block
    (1, 128, 256, 5, 7),  # tensor cores: dg and dphi in one kernel, its 64-key blocks at their widest
    (1, 256, 512, 5, 7),  # and its 32-key blocks at theirs (tf32's dtheta: the 256-column wide block)
    (0, 8, 3, 4, 4),
]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def inputs(shape, dtype, device, seed=0, logit_std=2.0):
    """theta, phi scaled so that the logits scale * theta . phi have about logit_std."""
    b, d, c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    qk_std = math.sqrt(logit_std)  # theta . phi has std qk_std^2 sqrt(d); scale = 1/sqrt(d)
    theta = qk_std * torch.randn(b, d, h, w, generator=gen, dtype=torch.float64)
    phi = qk_std * torch.randn(b, d, h, w, generator=gen, dtype=torch.float64)
    g = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    grad_y = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    return [t.to(device, dtype) for t in (theta, phi, g, grad_y)]


def run(fn, theta, phi, g, grad_y, scale):
    leaves = [t.detach().clone().requires_grad_(True) for t in (theta, phi, g)]
    y = fn(*leaves, scale)
    if y.numel():
        grads = torch.autograd.grad(y, leaves, grad_y)
    else:
        grads = tuple(torch.zeros_like(t) for t in leaves)
    return y, grads


def backend_fn(backend):
    op = backend.op("nlm_gaussian")
    return lambda theta, phi, g, scale: op(theta, phi, g, scale)[0]


def check(backend, shape, dtype, seed=0, logit_std=2.0, layout=None, scale=None, precision=None):
    """precision: the dtype whose PyTorch maths the result is held to (default: dtype's own)."""
    precision = dtype if precision is None else precision
    theta, phi, g, grad_y = inputs(shape, dtype, backend.device, seed, logit_std)
    if layout is not None:
        theta, phi, g, grad_y = (layout(t) for t in (theta, phi, g, grad_y))
    scale = 1.0 / math.sqrt(shape[1]) if scale is None else scale
    y, grads = run(backend_fn(backend), theta, phi, g, grad_y, scale)
    y64, grads64 = run(reference.nlm_gaussian, *(t.cpu().double() for t in (theta, phi, g, grad_y)), scale)
    lowp = (None, (None, None, None))
    if precision in (torch.float16, torch.bfloat16):
        lowp = run(reference.nlm_gaussian, *(t.cpu().to(precision) for t in (theta, phi, g, grad_y)), scale)
    assert y.dtype == dtype and y.shape == g.shape
    assert_close_to_oracle(y, y64, precision, FORWARD_TOL, lowp[0], name="y")
    for name, grad, grad64, lowp_grad, t in zip(("grad theta", "grad phi", "grad g"), grads, grads64, lowp[1],
                                                 (theta, phi, g)):
        assert grad.shape == t.shape and grad.dtype == dtype, name
        # sums over the N positions (and over d or C for dp)
        assert_close_to_oracle(grad, grad64, precision, REDUCTION_TOL, lowp_grad, name=name)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(backend, dtype):
    for i, shape in enumerate(EMU_SHAPES if backend.emulated else SHAPES):
        check(backend, shape, dtype, seed=i)


@pytest.mark.skipif(not fastrobust.HAS_EMU, reason="built without FR_EMULATE_CUDA=1")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_emulated_simt_path_of_16_bit_types(monkeypatch, dtype):
    # What a GPU older than sm_80 runs for fp16/bf16: the SIMT kernels (float32 products)
    emu = CUDA_EMU
    shape = (2, 24, 70, 9, 8)
    theta, phi, g, _ = inputs(shape, dtype, "cpu")
    tensor_cores = emu.op("nlm_gaussian")(theta, phi, g, 0.2)[0]
    monkeypatch.setenv("FASTROBUST_EMU_SIMT", "1")
    simt = emu.op("nlm_gaussian")(theta, phi, g, 0.2)[0]
    # the two paths round differently (p is rounded to the input type on tensor cores only)
    assert not torch.equal(simt, tensor_cores)
    for i, shape in enumerate(EMU_SHAPES):
        check(emu, shape, dtype, seed=i)


@pytest.fixture
def cuda_matmul_precision():
    """Sets torch.backends.cuda.matmul.fp32_precision for the test, restored after."""
    before = torch.backends.cuda.matmul.fp32_precision
    yield lambda value: setattr(torch.backends.cuda.matmul, "fp32_precision", value)
    torch.backends.cuda.matmul.fp32_precision = before


@pytest.mark.skipif(not fastrobust.HAS_EMU, reason="built without FR_EMULATE_CUDA=1")
def test_emulated_tf32_path_of_fp32(cuda_matmul_precision):
    """Where torch allows tf32 in CUDA matrix products, fp32 inputs run the tensor-core kernels
    on tf32 values: 10-bit mantissas, fp16's, with float accumulators, so the results are held to
    fp16's bound (at most 2x PyTorch's fp16 error, plus a floor)."""
    cuda_matmul_precision("tf32")
    for i, shape in enumerate(EMU_SHAPES):
        check(CUDA_EMU, shape, torch.float32, seed=i, precision=torch.float16)


@pytest.mark.skipif(not fastrobust.HAS_EMU, reason="built without FR_EMULATE_CUDA=1")
@pytest.mark.parametrize("channels", [3, 70])  # the narrowest block of the one-pass forward, and wider
def test_tf32_runs_only_where_torch_allows_it(cuda_matmul_precision, channels):
    """fp32 takes the tensor-core kernels with fp32_precision = "tf32" only: the forward in one
    pass and the backward's gradients (dg and dphi from one kernel, dtheta), on m16n8k8 products
    of tf32 values (the forward's logits are tf32 products, as the backward's are, so the lse it
    passes on is the one the backward's logits sum to one against)."""
    from fastrobust.kernel_resources import kernel_name, record_launches

    theta, phi, g, grad_y = inputs((2, 24, channels, 9, 8), torch.float32, "cpu", seed=3)

    def forward_backward():
        y, lse = CUDA_EMU.op("nlm_gaussian")(theta, phi, g, 0.2)
        return y, CUDA_EMU.op("_nlm_gaussian_backward")(grad_y, theta, phi, g, y, lse, 0.2)

    def kernels():  # (record_launches may run a sample of the blocks: its outputs are not kept)
        return [kernel_name(symbol) for symbol, *_ in record_launches(forward_backward)]

    cuda_matmul_precision("ieee")
    assert not any("mma" in name for name in kernels())
    ieee_y, ieee_grads = forward_backward()
    cuda_matmul_precision("tf32")
    width = 64 if channels <= 64 else 128  # the forward's columns (C); dtheta's: d's (24)
    assert [name for name in kernels() if name != "nlm::row_dot_kernel<float>"] == [
        f"nlm::forward_mma_kernel<float, {width}>", "nlm::fused_key_gradients_kernel<float, 64>",
        "nlm::backward_mma_kernel<float, Grad(3), 64>"]
    tf32_y, tf32_grads = forward_backward()
    for tf32, ieee in zip((tf32_y, *tf32_grads), (ieee_y, *ieee_grads)):
        assert not torch.equal(tf32, ieee)  # rounded to tf32: not the fp32 kernels' bits
        torch.testing.assert_close(tf32, ieee, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not fastrobust.HAS_EMU, reason="built without FR_EMULATE_CUDA=1")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_planes_run_the_batch_in_chunks(monkeypatch, dtype):
    """The SIMT kernels (fp32, and fp16/bf16 where there are no tensor cores) keep (query, key)
    planes in global memory for the backward (8 N^2 bytes per sample: p and ds in float) and for
    the forward over more than 64 channels (4 N^2: the logits), and run the batch in chunks
    within a memory budget: one or two samples per chunk give the bits of the whole batch at
    once."""
    monkeypatch.setenv("FASTROBUST_EMU_SIMT", "1")
    shape = (3, 24, 70, 5, 7)  # N = 35
    theta, phi, g, grad_y = inputs(shape, dtype, "cpu", seed=5)
    fn = backend_fn(CUDA_EMU)
    whole_y, whole_grads = run(fn, theta, phi, g, grad_y, 0.2)
    lse = CUDA_EMU.op("nlm_gaussian")(theta, phi, g, 0.2)[1]
    for budget in ("4900", "9800"):  # 4 N^2 and 8 N^2 bytes
        monkeypatch.setenv("FASTROBUST_NLM_PLANE_BYTES", budget)
        y, grads = run(fn, theta, phi, g, grad_y, 0.2)
        assert torch.equal(y, whole_y)
        assert torch.equal(CUDA_EMU.op("nlm_gaussian")(theta, phi, g, 0.2)[1], lse)
        for grad, whole in zip(grads, whole_grads):
            assert torch.equal(grad, whole)


@pytest.mark.skipif(not fastrobust.HAS_EMU, reason="built without FR_EMULATE_CUDA=1")
def test_tensor_core_kernels_hold_no_planes(monkeypatch):
    """On tensor cores the forward and the backward keep no plane: under a budget of one byte of
    planes every launch still covers the whole batch."""
    from fastrobust.kernel_resources import kernel_name, record_launches

    theta, phi, g, grad_y = inputs((3, 24, 70, 5, 7), torch.bfloat16, "cpu", seed=2)
    y, lse = CUDA_EMU.op("nlm_gaussian")(theta, phi, g, 0.2)
    monkeypatch.setenv("FASTROBUST_NLM_PLANE_BYTES", "1")
    launches = record_launches(lambda: (CUDA_EMU.op("nlm_gaussian")(theta, phi, g, 0.2),
                                        CUDA_EMU.op("_nlm_gaussian_backward")(grad_y, theta, phi, g, y, lse, 0.2)))
    mma = [(kernel_name(symbol), grid) for symbol, grid, *_ in launches
           if "mma" in symbol or "fused_key_gradients" in symbol]
    assert [name for name, _ in mma] == [
        "nlm::forward_mma_kernel<BFloat16, 128>", "nlm::fused_key_gradients_kernel<BFloat16, 64>",
        "nlm::backward_mma_kernel<BFloat16, Grad(3), 64>"]
    assert all(grid[2] == 3 for _, grid in mma)


@pytest.mark.skipif(not fastrobust.HAS_EMU, reason="built without FR_EMULATE_CUDA=1")
def test_chunks_share_the_batch_evenly(monkeypatch):
    """Chunks as large as the budget allows, then evened out: 5 samples where 4 fit run as 3 + 2
    (not 4 + 1), where 2 fit as 2 + 2 + 1; the whole batch where it fits."""
    from fastrobust.kernel_resources import record_launches

    theta, phi, g, grad_y = inputs((5, 24, 70, 5, 7), torch.float32, "cpu", seed=1)  # N = 35, fp32 planes
    y, lse = CUDA_EMU.op("nlm_gaussian")(theta, phi, g, 0.2)

    def samples_per_launch(fn, kernel):
        return [grid[2] for symbol, grid, *_ in record_launches(fn) if kernel in symbol]

    def forward():
        CUDA_EMU.op("nlm_gaussian")(theta, phi, g, 0.2)

    def backward():
        CUDA_EMU.op("_nlm_gaussian_backward")(grad_y, theta, phi, g, y, lse, 0.2)

    monkeypatch.setenv("FASTROBUST_NLM_PLANE_BYTES", str(4 * 35 * 35 * 4))  # 4 samples of logits, 2 of p and ds
    assert samples_per_launch(forward, "plane_tile_kernel") == [3, 2]
    assert samples_per_launch(backward, "plane_tile_kernel") == [2, 2, 1]
    monkeypatch.delenv("FASTROBUST_NLM_PLANE_BYTES")
    assert samples_per_launch(forward, "plane_tile_kernel") == [5]
    assert samples_per_launch(backward, "plane_tile_kernel") == [5]


@pytest.mark.skipif(not fastrobust.HAS_EMU, reason="built without FR_EMULATE_CUDA=1")
@pytest.mark.parametrize("channels, groups", [(3, 1), (127, 1), (128, 2), (200, 3), (1024, 16), (4096, 16)])
def test_row_dot_comes_in_groups_of_channels(channels, groups):
    """The backward's D_i = dy_i . y_i is summed in C // 64 groups of channels (1 to 16), a grid
    dimension of row_dot_kernel each: at (8, 1024, 28x28) one group was 200 blocks, 0.19 waves on
    an H100. The dispatch's byte model (nlm_dispatch.row_dot_groups) counts the same groups."""
    from fastrobust.kernel_resources import record_launches
    from fastrobust.ops import nlm_dispatch

    theta, phi, g, grad_y = inputs((1, 4, channels, 2, 3), torch.float32, "cpu", seed=2)
    y, lse = CUDA_EMU.op("nlm_gaussian")(theta, phi, g, 0.5)
    launches = record_launches(lambda: CUDA_EMU.op("_nlm_gaussian_backward")(grad_y, theta, phi, g, y, lse, 0.5))
    assert [grid for symbol, grid, *_ in launches if "row_dot_kernel" in symbol] == [(1, 1, groups)]
    assert nlm_dispatch.row_dot_groups(channels) == groups


@pytest.mark.skipif(not fastrobust.HAS_EMU, reason="built without FR_EMULATE_CUDA=1")
@pytest.mark.parametrize("budget", ["lots", "0", "-5", ""])
def test_plane_budget_setting_rejects_what_is_not_a_byte_count(monkeypatch, budget):
    """FASTROBUST_NLM_PLANE_BYTES must be a positive integer; anything else is an error naming
    the setting. A test of its own, named "rejects": CI's AddressSanitizer step preloads ASan
    into Python, where its exception interceptor ends the process, and so leaves out by name the
    tests that expect an exception from C++ (.ci/test.sh)."""
    theta, phi, g, _ = inputs((1, 4, 70, 3, 3), torch.float32, "cpu", seed=0)  # the SIMT forward's planes
    monkeypatch.setenv("FASTROBUST_NLM_PLANE_BYTES", budget)
    with pytest.raises(RuntimeError, match="FASTROBUST_NLM_PLANE_BYTES must be a positive number of bytes"):
        CUDA_EMU.op("nlm_gaussian")(theta, phi, g, 0.2)


@pytest.mark.parametrize("backend", backends())
def test_log_sum_exp_is_saved(backend):
    theta, phi, g, _ = inputs((2, 8, 5, 6, 7), torch.float32, backend.device)
    y, lse = backend.op("nlm_gaussian")(theta, phi, g, 0.3)
    logits = reference.nlm_affinity_logits(*(t.double().cpu().reshape(2, t.shape[1], -1) for t in (theta, phi)), 0.3)
    assert lse.shape == (2, 42) and lse.dtype == torch.float32
    torch.testing.assert_close(lse.double().cpu(), torch.logsumexp(logits, dim=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", backends())
def test_flattened_layouts_and_scale(backend):
    """(B, d, N) inputs, channels_last and transposed (non-contiguous) maps, an explicit scale."""
    shape = (2, 8, 12, 5, 6)
    check(backend, shape, torch.float32, layout=lambda t: t.reshape(t.shape[0], t.shape[1], -1))
    check(backend, shape, torch.float32, layout=lambda t: t.contiguous(memory_format=torch.channels_last))
    check(backend, shape, torch.float32, layout=lambda t: t.transpose(2, 3))
    check(backend, shape, torch.float32, scale=0.05, seed=3)


@pytest.mark.parametrize("backend", backends())
def test_large_logits_are_stable(backend):
    """Logits scale * theta . phi of magnitude up to 1e4 in float32: the running max keeps every
    exp finite (no inf, no NaN) and the output matches the float64 softmax."""
    theta, phi, g, grad_y = inputs((2, 4, 6, 7, 5), torch.float32, backend.device, logit_std=1e4)
    logits = reference.nlm_affinity_logits(*(t.double().reshape(2, 4, -1) for t in (theta, phi)), 0.5)
    assert logits.abs().max() > 1e4
    y, grads = run(backend_fn(backend), theta, phi, g, grad_y, 0.5)
    y64, grads64 = run(reference.nlm_gaussian, *(t.double() for t in (theta, phi, g, grad_y)), 0.5)
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in grads)
    torch.testing.assert_close(y.double(), y64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[2].double(), grads64[2], rtol=1e-4, atol=1e-4)


def test_sdpa_baseline_is_the_same_maths():
    theta, phi, g, _ = inputs((2, 8, 12, 5, 6), torch.float64, "cpu")
    torch.testing.assert_close(reference.nlm_gaussian_sdpa(theta, phi, g), reference.nlm_gaussian(theta, phi, g))


def test_python_api_default_scale_is_inverse_sqrt_d():
    theta, phi, g, _ = inputs((2, 9, 4, 3, 5), torch.float32, "cpu")
    torch.testing.assert_close(nlm_gaussian(theta, phi, g), reference.nlm_gaussian(theta, phi, g, 1 / 3),
                               rtol=1e-5, atol=1e-5)


def test_autocast_runs_in_the_autocast_dtype():
    """Under autocast the op runs like a matmul, in the autocast dtype, even when the value g
    arrives in float32 and theta/phi in bfloat16 (conv outputs)."""
    theta, phi, g, _ = inputs((2, 8, 12, 5, 6), torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = nlm_gaussian(theta.bfloat16(), phi.bfloat16(), g)
    assert y.dtype == torch.bfloat16
    expected = reference.nlm_gaussian(*(t.bfloat16().double() for t in (theta, phi, g)))
    torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=2e-2)


def test_gradcheck():
    theta, phi, g, _ = inputs((2, 3, 4, 5, 7), torch.float64, "cpu")
    args = [t.requires_grad_(True) for t in (theta, phi, g)]
    assert torch.autograd.gradcheck(lambda a, b, c: nlm_gaussian(a, b, c, 0.7), args)


@pytest.mark.parametrize("namespace", ["fastrobust", "fastrobust_emu"])
def test_opcheck(namespace):
    if namespace == "fastrobust_emu" and not fastrobust.HAS_EMU:
        pytest.skip("built without FR_EMULATE_CUDA=1")
    theta, phi, g, _ = inputs((2, 4, 6, 5, 7), torch.float32, "cpu")
    op = getattr(torch.ops, namespace).nlm_gaussian.default
    torch.library.opcheck(op, tuple(t.requires_grad_(True) for t in (theta, phi, g)) + (0.5,))


def test_compile_fullgraph():
    theta, phi, g, grad_y = inputs((2, 4, 6, 5, 7), torch.float32, "cpu")

    def f(a, b, c, scale):
        return nlm_gaussian(a, b, c, scale)

    eager = run(f, theta, phi, g, grad_y, 0.5)
    compiled = run(torch.compile(f, fullgraph=True, backend="aot_eager"), theta, phi, g, grad_y, 0.5)
    torch.testing.assert_close(compiled[0], eager[0])
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", backends())
def test_errors_name_the_argument(backend):
    op = backend.op("nlm_gaussian")
    theta, phi, g, _ = inputs((2, 4, 6, 5, 7), torch.float32, backend.device)
    cases = [
        ((theta[0, 0], phi, g, 1.0), r"theta must be a 3-D \(B, d, N\) or 4-D \(B, d, H, W\) tensor, got 2-D"),
        ((theta, phi[:, :, :4], g, 1.0), r"phi must have the positions of theta \[5, 7\], got \[4, 7\]"),
        ((theta, phi, g[:, :, :, :6], 1.0), r"g must have the positions of theta"),
        ((theta, phi[:, :3], g, 1.0), r"phi must have the width d of theta \(4\), got 3"),
        ((theta, phi[:1], g, 1.0), r"phi must have the batch size of theta \(2\), got 1"),
        ((theta, phi, g[:1], 1.0), r"g must have the batch size of theta \(2\), got 1"),
        ((theta, phi, g.reshape(2, 6, 35), 1.0), r"g must have the rank of theta \(4-D\), got 3-D"),
        ((theta, phi.double(), g, 1.0), r"phi must have the dtype of theta \(Float\), got Double"),
        ((theta.long(), phi.long(), g.long(), 1.0), "theta must have a floating-point dtype"),
        ((theta, phi, g, float("inf")), "scale must be finite"),
    ]
    if backend.device == "cpu":
        cases.append(((theta, phi.to("meta"), g, 1.0), "phi must be on the device of theta"))
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            op(*args)
    y, lse = op(theta, phi, g, 1.0)
    backward = backend.op("_nlm_gaussian_backward")
    with pytest.raises(RuntimeError, match=r"grad_y must have the shape of g"):
        backward(y[:, :3], theta, phi, g, y, lse, 1.0)
    with pytest.raises(RuntimeError, match=r"lse must have shape \[2, 35\]"):
        backward(y, theta, phi, g, y, lse[:, :4], 1.0)
    with pytest.raises(RuntimeError, match=r"lse must have dtype Float"):
        backward(y, theta, phi, g, y, lse.double(), 1.0)


def test_python_errors_match_the_kernels():
    theta, phi, g, _ = inputs((2, 4, 6, 5, 7), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=r"phi must have the width d of theta \(4\), got 3"):
        reference.nlm_gaussian(theta, phi[:, :3], g)
    with pytest.raises(TypeError, match="g must be a torch.Tensor"):
        nlm_gaussian(theta, phi, g.tolist())
    with pytest.raises(ValueError, match="scale must be finite"):
        nlm_gaussian(theta, phi, g, float("nan"))


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels", [3, 70, 300])  # bf16: blocks of 64 and 128 columns, the wide forward's 512
def test_zero_width_queries_give_the_mean(backend, dtype, channels):
    """d = 0: every logit is 0, so y is the mean of g and lse = log N. The tensor-core forward
    once zeroed its output accumulators across the block and rescaled them per warp with no
    barrier between when d = 0 (the emulator's racecheck reports it)."""
    g = torch.Generator().manual_seed(3)
    theta = torch.zeros(2, 0, 5, 7, dtype=dtype, device=backend.device)
    values = torch.randn(2, channels, 5, 7, generator=g).to(dtype=dtype, device=backend.device)
    y, lse = backend.op("nlm_gaussian")(theta, theta, values, 1.0)
    mean = values.double().mean(dim=(2, 3), keepdim=True).expand(values.shape)
    torch.testing.assert_close(y.double().cpu(), mean.cpu(), rtol=0.02, atol=0.02)
    torch.testing.assert_close(lse.cpu(), torch.full((2, 35), math.log(35)))


@pytest.mark.parametrize("binary,ptx,major,usable", [
    (90, 90, 9, True),    # sm_90 cubin on an H100 / H200
    (80, 80, 9, True),    # sm_80 cubin or compute_80 PTX on a newer GPU: bodies compiled in
    (90, 75, 9, False),   # "7.5+PTX" JIT-compiled on sm_90: the bodies are traps
    (75, 75, 7, False),   # a Turing GPU
    (86, 0, 8, True),     # no PTX version reported: the binary decides
    (90, 90, 7, False),   # a device without bf16 tensor cores
])
def test_tensor_core_path_follows_the_compiled_code(binary, ptx, major, usable):
    """The host runs the wmma kernels only where the code the device runs was compiled for
    sm_80+ (their bodies are __trap() below), not from the compute capability alone."""
    assert fastrobust._C._nlm_tensor_core_kernels_usable(major, binary, ptx) is usable
