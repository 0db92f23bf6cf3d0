"""Property tests of the layer ops (sparta, median3x3, cifs_reweight; nlm_gaussian in
test_properties_nlm.py) on every backend, forward and backward, against float64 oracles written
here from the op contracts (design.md section 3, the docstrings of fastrobust/ops/*.py): shapes
(empty batch, size-1 dims, odd sizes), layouts (contiguous, channels_last, transposed, strided
slices), dtypes and values (ties, zeros, +-1e4, subnormals, NaN, +-inf), under the NaN / inf policy of
design.md section 9 (tests/properties_support.py: assert_matches_oracle).

Example counts: properties_support.max_examples() per op and backend (200; 2,000 with --slow).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import fastrobust
from fastrobust.testing import BACKWARD_TOL, CPU, FORWARD_TOL, REDUCTION_TOL, backends

from properties_support import (acc_dtype, assert_equal_nan, assert_matches_oracle, coarser,
                                draw_layout, draw_nonfinite, dtypes, f64, finite, grads, property_settings, tensors)

pytestmark = [pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built"),
              pytest.mark.usefixtures("one_thread")]


# -- sparta --------------------------------------------------------------------------------------

def depthwise(x, w):
    """z[b,c,h,w] = sum_ij w[c,0,i,j] x[b,c,h+i-r,w+j-r], zero outside the image (nn.Conv2d's
    depthwise cross-correlation with padding r = k//2)."""
    k = w.shape[-1]
    r = k // 2
    windows = F.pad(x, (r, r, r, r)).unfold(2, k, 1).unfold(3, k, 1)  # (B, C, H, W, k, k)
    return (windows * w[:, 0, None, None]).sum((-2, -1))


def sparta_oracle(x, w, b):
    """Sparta (design.md section 3): y = relu(x) * 2 * sigmoid(depthwise_k(x) + b)."""
    return torch.relu(x) * 2 * torch.sigmoid(depthwise(x, w) + b[:, None, None])


def sparta_error_scales(x, w, b, gy):
    """Error magnitudes of y, dx, dw, db: the gate's sum z taken over |w||x| (+|b|), carried
    through sigmoid' (and sigmoid'' <= sigmoid'); sigmoid' = s (1 - s) itself is off by ~u s in
    working precision (1 - s cancels as s -> 1, in torch's float32 sigmoid backward too); the
    gradient sums over |terms|."""
    x, gy = finite(x), finite(gy)
    s = torch.sigmoid(depthwise(x, w) + b[:, None, None])
    ds = s * (1 - s)
    z_abs = depthwise(x.abs(), w.abs()) + b.abs()[:, None, None]
    relu2 = 2 * torch.relu(x)
    dz_mag = gy.abs() * relu2 * (ds * (1 + z_abs) + s)
    xv, wv = torch.zeros_like(x, requires_grad=True), torch.zeros_like(w, requires_grad=True)
    dx_conv, = torch.autograd.grad(depthwise(xv, w.abs()), xv, dz_mag)
    dw_mag, = torch.autograd.grad(depthwise(x.abs(), wv), wv, dz_mag)
    dx_mag = gy.abs() * 2 * (x > 0) * (s + ds * z_abs) + dx_conv
    return relu2 * ds * z_abs, dx_mag, dw_mag, dz_mag.sum((0, 2, 3))


@st.composite
def sparta_shapes(draw, emulated):
    # The emulator runs every 256-thread block as std::threads: keep to a few blocks there.
    side = 10 if emulated else 40
    return (draw(st.integers(0, 2 if emulated else 3)), draw(st.integers(1, 4 if emulated else 6)),
            draw(st.integers(1, 10)), draw(st.integers(1, side)))


@pytest.mark.parametrize("backend", backends())
@property_settings()
@given(data=st.data())
def test_sparta(backend, data):
    """y, dx, dw, db against the oracle; a NaN / inf in x reaches y in its k x k window, dx in
    its 2r window (equal non-finite masks); dw[c], db[c] are compared where the oracle is
    finite and must be finite for channels without a non-finite x."""
    dtype = data.draw(dtypes(), label="dtype")
    k = data.draw(st.sampled_from([1, 3, 5, 7]), label="k")
    shape = data.draw(sparta_shapes(backend.emulated), label="shape")
    bad = draw_nonfinite(data, ["x"])
    x = data.draw(tensors(shape, dtype, nonfinite="x" in bad), label="x")
    w = data.draw(tensors((shape[1], 1, k, k), dtype, scale=0.5), label="weight")
    b = data.draw(tensors((shape[1],), dtype, scale=0.5), label="bias")
    gy = data.draw(tensors(shape, dtype), label="grad_y")
    xd, wd, bd, gyd = (draw_layout(data, t, name).to(backend.device)
                       for t, name in ((x, "x"), (w, "weight"), (b, "bias"), (gy, "grad_y")))

    y = backend.op("sparta")(xd, wd, bd)
    if data.draw(st.booleans(), label="through autograd"):
        leaves = [t.detach().requires_grad_(True) for t in (xd, wd, bd)]
        dx, dw, db = torch.autograd.grad(backend.op("sparta")(*leaves), leaves, gyd)
    else:
        dx, dw, db = backend.op("_sparta_backward")(gyd, xd, wd, bd)

    y64, (dx64, dw64, db64) = grads(sparta_oracle, [f64(x), f64(w), f64(b)], f64(gy))
    y_mag, dx_mag, dw_mag, db_mag = sparta_error_scales(f64(x), f64(w), f64(b), f64(gy))
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    assert (dx.dtype, dw.dtype, db.dtype) == (dtype, dtype, dtype)
    assert_matches_oracle(y, y64, dtype, FORWARD_TOL, "y", y_mag)
    assert_matches_oracle(dx, dx64, dtype, BACKWARD_TOL, "dx", dx_mag)
    # Channels with a non-finite x: dw[c], db[c] compared where both are finite; the others
    # in full (finite exactly where the oracle is).
    bad_channel = ~torch.isfinite(f64(x)).all(dim=0).all(dim=-1).all(dim=-1)  # (C,)
    assert_matches_oracle(dw, dw64, dtype, REDUCTION_TOL, "dw", dw_mag, free=bad_channel[:, None, None, None])
    assert_matches_oracle(db, db64, dtype, REDUCTION_TOL, "db", db_mag, free=bad_channel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_sparta_cpu_closed_gate_on_plus_inf_is_nan(dtype):
    """x = +inf with a negative 1x1 weight: z = -inf, y = relu(inf) * 2 * sigmoid(-inf) = inf * 0,
    NaN in IEEE arithmetic, as eager PyTorch, the float64 CPU kernel and the emulated CUDA kernel
    give; dx = gy * 2 * sigmoid(z) * [x > 0] + dz * w is NaN too."""
    x = torch.tensor([math.inf], dtype=dtype).reshape(1, 1, 1, 1)
    w = torch.tensor([-0.5], dtype=dtype).reshape(1, 1, 1, 1)
    b = torch.zeros(1, dtype=dtype)
    y = CPU.op("sparta")(x, w, b)
    dx, _, _ = CPU.op("_sparta_backward")(torch.ones_like(x), x, w, b)
    assert torch.isnan(y).all() and torch.isnan(dx).all(), (y.item(), dx.item())


# -- median3x3 -------------------------------------------------------------------------------------

def reflect(i, n):
    """Index i in [-1, n] of a padded dimension -> the pixel it reads: torch's 'reflect'
    (-1 -> 1, n -> n - 2), and the pixel itself along a dimension of size 1 (replicate)."""
    if n == 1:
        return 0
    return 1 if i == -1 else n - 2 if i == n else i


def median_oracle(x):
    """median3x3 (fastrobust/ops/median.py), one window at a time: the 5th smallest of the nine
    (value, window position) pairs, positions row-major (dy + 1) * 3 + (dx + 1), so equal values
    go to the lower position; a window holding a NaN gives NaN at its first NaN. Returns
    (y, arg, source): source[b, c, h, w] = (h', w') the pixel selected."""
    b, c, h, w = x.shape
    y = torch.empty(x.shape, dtype=torch.float64)
    arg = torch.empty(x.shape, dtype=torch.uint8)
    source = {}
    v = x.tolist()
    for n in range(b):
        for ch in range(c):
            plane = v[n][ch]
            for i in range(h):
                for j in range(w):
                    window = [(plane[reflect(i + dy, h)][reflect(j + dx, w)], (dy + 1) * 3 + (dx + 1),
                               (reflect(i + dy, h), reflect(j + dx, w)))
                              for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
                    nans = [entry for entry in window if math.isnan(entry[0])]
                    value, position, pixel = nans[0] if nans else sorted(window, key=lambda e: (e[0], e[1]))[4]
                    y[n, ch, i, j], arg[n, ch, i, j] = value, position
                    source[n, ch, i, j] = pixel
    return y, arg, source


def median_grad_oracle(gy, source):
    """The backward: each output's gradient added to the pixel it selected."""
    dx = torch.zeros(gy.shape, dtype=torch.float64)
    for (n, ch, i, j), (si, sj) in source.items():
        dx[n, ch, si, sj] += gy[n, ch, i, j]
    return dx


@pytest.mark.parametrize("backend", backends())
@property_settings()
@given(data=st.data())
def test_median3x3(backend, data):
    """y and arg exactly equal to the oracle's (a median selects, it computes nothing), NaN per
    window, +-inf ordinary values; the gradient is the oracle's scatter of grad_y."""
    dtype = data.draw(dtypes(), label="dtype")
    emulated = backend.emulated
    shape = (data.draw(st.integers(0, 2)), data.draw(st.integers(1, 3 if emulated else 5)),
             data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9 if emulated else 24)))
    bad = draw_nonfinite(data, ["x"])
    x = data.draw(tensors(shape, dtype, nonfinite="x" in bad), label="x")
    gy = data.draw(tensors(shape, dtype), label="grad_y")
    xd, gyd = draw_layout(data, x, "x").to(backend.device), draw_layout(data, gy, "grad_y").to(backend.device)

    y, arg = backend.op("median3x3")(xd)
    if data.draw(st.booleans(), label="through autograd"):
        leaf = xd.detach().requires_grad_(True)
        dx, = torch.autograd.grad(backend.op("median3x3")(leaf)[0], leaf, gyd)
    else:
        dx = backend.op("_median3x3_backward")(gyd, arg)

    y64, arg64, source = median_oracle(f64(x))
    assert y.is_contiguous() and arg.is_contiguous()
    assert_equal_nan(y, y64.to(dtype), "y")
    assert_equal_nan(arg.cpu(), arg64, "arg")
    assert dx.dtype == dtype
    assert_matches_oracle(dx, median_grad_oracle(f64(gy), source), dtype, BACKWARD_TOL, "dx")


# -- cifs_reweight ---------------------------------------------------------------------------------

def cifs_oracle(feat, relevance, temperature, scale):
    """cifs_reweight (fastrobust/ops/cifs.py): out = feat * scale * softmax_c(relevance / T),
    the channel mask broadcast over H and W."""
    return feat * (scale * torch.softmax(relevance / temperature, dim=1))[:, :, None, None]


def cifs_error_scales(feat, relevance, temperature, scale, gy):
    """Error magnitudes of out, grad_feat, grad_relevance: relevance / T is off by ~u |r| / T, so
    p_c by p_c (1 + R_c), R_c = (|r_c| + sum_k p_k |r_k|) / T; then G_c = sum_hw gy feat over
    |terms| and grad_r_c = (s / T) p_c (G_c - sum_k p_k G_k) over |terms|."""
    p = torch.nan_to_num(torch.softmax(relevance / temperature, dim=1), nan=0.0)  # -inf relevance: p = 0
    feat, relevance, gy = finite(feat), finite(relevance), finite(gy)
    big_r = (relevance.abs() + (p * relevance.abs()).sum(1, keepdim=True)) / temperature
    mask_mag = (abs(scale) * p * (1 + big_r))[:, :, None, None]
    big_g = (gy * feat).sum((2, 3))
    big_g_abs = (gy.abs() * feat.abs()).sum((2, 3))
    centred = (big_g - (p * big_g).sum(1, keepdim=True)).abs()
    grad_r_mag = abs(scale) / temperature * p * (
        (1 + big_r) * centred + big_g_abs + (p * (1 + big_r) * big_g_abs).sum(1, keepdim=True))
    return feat.abs() * mask_mag, gy.abs() * mask_mag, grad_r_mag


@pytest.mark.parametrize("backend", backends())
@property_settings()
@given(data=st.data())
def test_cifs_reweight(backend, data):
    """out, grad_feat, grad_relevance against the oracle; a NaN in relevance[b] makes out[b] NaN,
    in feat[b,c,h,w] only out[b,c,h,w] (and grad_relevance[b,:]) (equal non-finite masks). The
    maths runs in float32 (float64 for float64 feat): the oracle reads relevance rounded so."""
    dtype = data.draw(dtypes(), label="feat dtype")
    rel_dtype = data.draw(dtypes(), label="relevance dtype")
    c_max = 130
    shape = (data.draw(st.integers(0, 3)), data.draw(st.sampled_from([1, 2, 3, 5, 17, 64, c_max])),
             data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5 if backend.emulated else 12)))
    bad = draw_nonfinite(data, ["feat", "relevance", "grad_pooled"])
    feat = data.draw(tensors(shape, dtype, nonfinite="feat" in bad), label="feat")
    relevance = data.draw(tensors(shape[:2], rel_dtype, nonfinite="relevance" in bad, scale=3.0), label="relevance")
    gy = data.draw(tensors(shape, dtype), label="grad_out")
    temperature = data.draw(st.sampled_from([1.0, 0.5, 2.0, 0.1, 7.0]), label="temperature")
    scale = data.draw(st.sampled_from([1.0, 2.0, 0.5, -1.0, 0.0]), label="scale")
    fd, rd, gyd = (draw_layout(data, t, name).to(backend.device)
                   for t, name in ((feat, "feat"), (relevance, "relevance"), (gy, "grad_out")))

    out = backend.op("cifs_reweight")(fd, rd, temperature, scale)
    if data.draw(st.booleans(), label="through autograd"):
        leaves = [t.detach().requires_grad_(True) for t in (fd, rd)]
        grad_feat, grad_rel = torch.autograd.grad(backend.op("cifs_reweight")(*leaves, temperature, scale),
                                                  leaves, gyd)
        grad_pooled = None
    else:
        # the fused pooling gradient (cifs_layer's): grad_feat gains grad_pooled / (H W)
        grad_pooled = data.draw(st.none() | tensors(shape[:2], data.draw(dtypes(), label="grad_pooled dtype"),
                                                    nonfinite="grad_pooled" in bad), label="grad_pooled")
        gpd = None if grad_pooled is None else draw_layout(data, grad_pooled, "grad_pooled").to(backend.device)
        grad_feat, grad_rel = backend.op("_cifs_reweight_backward")(gyd, fd, rd, temperature, scale, gpd)

    acc = acc_dtype(dtype)
    inputs = [f64(feat), f64(relevance.to(acc))]
    out64, (grad_feat64, grad_rel64) = grads(lambda f, r: cifs_oracle(f, r, temperature, scale), inputs, f64(gy))
    out_mag, grad_feat_mag, grad_rel_mag = cifs_error_scales(*inputs, temperature, scale, f64(gy))
    if grad_pooled is not None:  # the kernel reads grad_pooled rounded to the working type
        pooled_term = f64(grad_pooled.to(acc))[:, :, None, None] / (shape[2] * shape[3])
        grad_feat64 = grad_feat64 + pooled_term
        grad_feat_mag = grad_feat_mag + finite(pooled_term).abs()
    assert out.dtype == dtype and out.shape == feat.shape and out.is_contiguous()
    assert grad_feat.dtype == dtype and grad_rel.dtype == rel_dtype
    # A probability below the working type's normal range may be 0 or not (subnormals, flush to
    # zero): times an infinite feat it is +-inf or NaN. Those outputs (out[b,c], and
    # grad_relevance[b,:] of a row holding a non-finite feat) are compared only where finite.
    p64 = torch.softmax(inputs[1] / temperature, dim=1)
    tiny = (p64 > 0) & (p64 < torch.finfo(acc).tiny)
    row_tiny = tiny.any(1, keepdim=True) & ~torch.isfinite(inputs[0].flatten(1)).all(1, keepdim=True)
    assert_matches_oracle(out, out64, dtype, FORWARD_TOL, "out", out_mag, free=tiny[:, :, None, None])
    assert_matches_oracle(grad_feat, grad_feat64, dtype, BACKWARD_TOL, "grad_feat", grad_feat_mag)
    assert_matches_oracle(grad_rel, grad_rel64, coarser(rel_dtype, acc), REDUCTION_TOL, "grad_relevance", grad_rel_mag,
                          free=row_tiny)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cifs_reweight_cpu_probability_0(dtype):
    """softmax([0, 1000]) = [0, 1] exactly, in float32 and float64: out[0] = feat[0] * 0 = 0, and
    grad_relevance_c = p_c (G_c - sum_k p_k G_k) with G_1 = inf gives 0 * inf = NaN at c = 0."""
    feat = torch.tensor([1.0, math.inf], dtype=dtype).reshape(1, 2, 1, 1)
    relevance = torch.tensor([[0.0, 1000.0]], dtype=dtype)
    out = CPU.op("cifs_reweight")(feat, relevance, 1.0, 1.0)
    _, grad_relevance = CPU.op("_cifs_reweight_backward")(torch.ones_like(feat), feat, relevance, 1.0, 1.0)
    assert out[0, 0].item() == 0.0 and torch.isnan(grad_relevance).all(), (out.tolist(), grad_relevance.tolist())


# -- _cifs_pool (the CIFS layer's global average pooling on the CPU) ----------------------------

@property_settings()
@given(data=st.data())
def test_cifs_pool(data):
    """_cifs_pool(feat) against the float64 mean over H and W: rows (B C) in and out of the
    kernel's groups of eight, H W in and out of multiples of eight, every layout (a strided
    slice's gaps hold NaN: read, they would show), NaN / +-inf only in their own row's mean
    (+inf and -inf in one row: NaN). The sum runs in float32 (float64 for float64) eight lanes
    wide: its error is within a few units of the working type times the mean of |feat|."""
    dtype = data.draw(dtypes(), label="dtype")
    shape = (data.draw(st.integers(0, 3)), data.draw(st.sampled_from([1, 2, 3, 7, 8, 9, 17, 64])),
             data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8)))
    feat = data.draw(tensors(shape, dtype, nonfinite=data.draw(st.booleans(), label="non-finite")), label="feat")
    pooled = CPU.op("_cifs_pool")(draw_layout(data, feat, "feat"))
    assert pooled.dtype == dtype and pooled.shape == shape[:2] and pooled.is_contiguous()
    mag = finite(f64(feat)).abs().mean((2, 3))
    assert_matches_oracle(pooled, f64(feat).mean((2, 3)), dtype, FORWARD_TOL, "pooled", mag)
