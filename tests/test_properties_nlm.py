"""Property tests of nlm_gaussian on every backend, forward and backward, against a float64
oracle written here from the op's contract (design.md section 3, fastrobust/ops/nlm.py):
generated shapes (empty batch, size-1 dims, odd sizes; on tensor cores the 16-bit kernels' wide
forms over 256 columns), layouts, dtypes and values (ties, zeros, +-1e4, subnormals, NaN, +-inf)
under the NaN / inf policy of design.md section 9 (tests/properties_support.py:
assert_matches_oracle).

Example counts: properties_support.max_examples() per property and backend (200; 2,000 with --slow).
"""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastrobust
from fastrobust.testing import BACKWARD_TOL, CPU, FORWARD_TOL, backends

from properties_support import (LOW_PRECISION, acc_dtype, assert_matches_oracle, draw_layout, draw_nonfinite,
                                dtypes, f64, finite, grads, property_settings, tensors)

pytestmark = [pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built"),
              pytest.mark.usefixtures("one_thread")]


def flat(t):
    """(B, c, H, W) or (B, c, N) -> (B, c, N): the N = H*W positions in row-major order."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def nlm_oracle(theta, phi, g, scale):
    """nlm_gaussian (fastrobust/ops/nlm.py): logits s_ij = scale * (theta_i . phi_j) over the N
    positions, y_i = sum_j softmax_j(s_ij) g_j (torch.softmax: a +inf logit makes its row NaN),
    lse_i = logsumexp_j s_ij."""
    q, k, v = flat(theta), flat(phi), flat(g)
    logits = scale * (q[:, :, :, None] * k[:, :, None, :]).sum(1)  # (B, N, N), [b, i, j]
    p = torch.softmax(logits, dim=-1)
    y = (p[:, None, :, :] * v[:, :, None, :]).sum(-1)  # (B, C, N)
    return y.reshape(g.shape), torch.logsumexp(logits, dim=-1)


def nlm_error_scales(theta, phi, g, gy, scale):
    """Error magnitudes of y, lse, dtheta, dphi, dg. A logit's error scale is
    L_ij = |scale| |theta_i| . |phi_j|; it moves p_ij by p_ij (L_ij + sum_k p_ik L_ik) (P below)
    and y_i by sum_j p_ij |g_j - y_i| L_ij; the gradient sums (dg = P^T dy, ds = p (dp - D),
    dtheta = scale ds phi, dphi = scale ds^T theta) are then taken over |terms|."""
    # p from the true logits (a -inf logit is a 0 there), the rest over the finite inputs: only
    # finite outputs use these scales.
    p = torch.nan_to_num(torch.softmax(scale * (flat(theta)[:, :, :, None] * flat(phi)[:, :, None, :]).sum(1), dim=-1),
                         nan=0.0)
    q, k, v, dy = (finite(flat(t)) for t in (theta, phi, g, gy))
    y = torch.einsum("bij,bcj->bci", p, v)
    big_l = abs(scale) * torch.einsum("bdi,bdj->bij", q.abs(), k.abs())
    spread = (v[:, :, None, :] - y[:, :, :, None]).abs()  # |g_j - y_i|, (B, C, N_i, N_j)
    y_mag = (p[:, None] * (v.abs()[:, :, None, :] + spread * big_l[:, None])).sum(-1)
    big_p = big_l + (p * big_l).sum(-1, keepdim=True)
    lse_mag = (p * big_l).sum(-1)
    dg_mag = torch.einsum("bij,bci->bcj", p * (1 + big_p), dy.abs())
    dp = torch.einsum("bci,bcj->bij", dy, v)
    d_row = (dy * y).sum(1)
    d_mag = (dy.abs() * (y.abs() + y_mag)).sum(1)
    ds_mag = p * (1 + big_p) * (dp - d_row[:, :, None]).abs() + p * (
        torch.einsum("bci,bcj->bij", dy.abs(), v.abs()) + d_mag[:, :, None])
    dtheta_mag = abs(scale) * torch.einsum("bij,bdj->bdi", ds_mag, k.abs())
    dphi_mag = abs(scale) * torch.einsum("bij,bdi->bdj", ds_mag, q.abs())
    return (y_mag.reshape(g.shape), lse_mag, dtheta_mag.reshape(theta.shape), dphi_mag.reshape(phi.shape),
            dg_mag.reshape(g.shape))


@st.composite
def nlm_shapes(draw, emulated):
    """(B, d, C, positions): 3-D (B, c, N) or 4-D (B, c, H, W) maps; N up to 81 crosses the
    kernels' 32-key tiles and 64-query blocks, C = 70 their 64-channel slices, d = 33 the
    32-wide reduction chunk; on tensor cores 16-bit C = 300 takes the wide forward's 512-channel
    blocks and the backward's 32-key blocks, C = 520 the wide forward's and dg's 1024-column
    slices (dg and dphi from separate kernels)."""
    b = draw(st.integers(0, 2))
    d = draw(st.sampled_from([1, 2, 3, 4, 8, 16, 24, 33]))
    c = draw(st.sampled_from([1, 2, 3, 5, 8, 13, 64, 70, 300, 520]))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    positions = (h, w) if draw(st.booleans()) else (h * w,)
    return b, d, c, positions


@st.composite
def nlm_wide_shapes(draw):
    """(B, d, C, positions) whose outputs are over 256 columns: the 16-bit tensor-core kernels'
    wide forms (the forward's and dg's blocks of 512 and slices of 1024 columns, dphi's and
    dtheta's at d = 300) and the fused dg and dphi on 32-key blocks (C <= 512, d <= 256)."""
    b = draw(st.integers(1, 2))
    d = draw(st.sampled_from([1, 8, 33, 300]))
    c = draw(st.sampled_from([5, 257, 300, 520]))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    positions = (h, w) if draw(st.booleans()) else (h * w,)
    return b, d, c, positions


@pytest.mark.parametrize("backend", backends())
@property_settings()
@given(data=st.data())
def test_nlm_gaussian(backend, data):
    """y, lse, dtheta, dphi, dg against the oracle; a NaN in g[b,c,j] reaches y[b,c,:], in
    theta[b,:,i] y[b,:,i], in phi[b,:,j] all of y[b], never another sample; +-inf in theta or
    phi give +-inf / NaN logits whose rows follow torch.softmax (equal non-finite masks)."""
    dtype = data.draw(dtypes(), label="dtype")
    check_nlm_gaussian(backend, data, dtype, data.draw(nlm_shapes(backend.emulated), label="shape"))


@pytest.mark.parametrize("backend", backends())
@property_settings()
@given(data=st.data())
def test_nlm_gaussian_over_256_columns_in_16_bits(backend, data):
    """test_nlm_gaussian's checks at fp16 / bf16 and widths over 256 columns (nlm_wide_shapes),
    which its own draws reach rarely in 16 bits."""
    dtype = data.draw(st.sampled_from(LOW_PRECISION), label="dtype")
    check_nlm_gaussian(backend, data, dtype, data.draw(nlm_wide_shapes(), label="shape"))


def check_nlm_gaussian(backend, data, dtype, shape):
    b, d, c, positions = shape
    bad = draw_nonfinite(data, ["theta", "phi", "g"])
    # float16 holds values up to 65504 only, and the contract keeps float16 intermediates (the
    # CPU kernel's logits, the tensor-core path's probabilities and ds = p (dy . g - D)): values
    # up to 10, not 1e4, so that these cannot overflow where the oracle's results are finite.
    values = dict(large=10.0, kinds=("normal", "ties", "tiny")) if dtype == torch.float16 else {}
    theta = data.draw(tensors((b, d, *positions), dtype, nonfinite="theta" in bad, **values), label="theta")
    phi = data.draw(tensors((b, d, *positions), dtype, nonfinite="phi" in bad, **values), label="phi")
    # g gets NaN only: y_i = sum_j p_ij g_j with g_j = inf is inf, or NaN where p_ij underflows
    # to 0, and where p_ij underflows depends on the working precision, not on the contract.
    g = data.draw(tensors((b, c, *positions), dtype, nonfinite="g" in bad, nonfinite_values=[math.nan], **values),
                  label="g")
    gy = data.draw(tensors((b, c, *positions), dtype, **values), label="grad_y")
    scale = data.draw(st.sampled_from([1 / math.sqrt(d), 1.0, 0.0, -0.7, 3.0]), label="scale")
    td, pd, gd, gyd = (draw_layout(data, t, name).to(backend.device)
                       for t, name in ((theta, "theta"), (phi, "phi"), (g, "g"), (gy, "grad_y")))

    y, lse = backend.op("nlm_gaussian")(td, pd, gd, scale)
    if data.draw(st.booleans(), label="through autograd"):
        leaves = [t.detach().requires_grad_(True) for t in (td, pd, gd)]
        dtheta, dphi, dg = torch.autograd.grad(backend.op("nlm_gaussian")(*leaves, scale)[0], leaves, gyd)
    else:
        dtheta, dphi, dg = backend.op("_nlm_gaussian_backward")(gyd, td, pd, gd, y, lse, scale)

    inputs = [f64(theta), f64(phi), f64(g)]
    y64, lse64 = nlm_oracle(*inputs, scale)
    _, (dtheta64, dphi64, dg64) = grads(lambda *t: nlm_oracle(*t, scale)[0], inputs, f64(gy))
    y_mag, lse_mag, dtheta_mag, dphi_mag, dg_mag = nlm_error_scales(*inputs, f64(gy), scale)
    assert y.dtype == dtype and y.shape == g.shape and y.is_contiguous()
    assert lse.dtype == acc_dtype(dtype) and lse.shape == (b, math.prod(positions))
    assert (dtheta.dtype, dphi.dtype, dg.dtype) == (dtype, dtype, dtype)
    # float16 / bfloat16: the CPU kernel keeps 16-bit logits and probabilities, the tensor-core
    # path 16-bit probabilities and ds (the contract), as PyTorch's 16-bit eager maths does.
    y_lowp = dtheta_lowp = dphi_lowp = dg_lowp = None
    if dtype in LOW_PRECISION:
        y_lowp, (dtheta_lowp, dphi_lowp, dg_lowp) = grads(lambda *t: nlm_oracle(*t, scale)[0], [theta, phi, g], gy)
    assert_matches_oracle(y, y64, dtype, FORWARD_TOL, "y", y_mag, lowp=y_lowp)
    assert_matches_oracle(lse, lse64, dtype, FORWARD_TOL, "lse", lse_mag)
    assert_matches_oracle(dg, dg64, dtype, BACKWARD_TOL, "dg", dg_mag, lowp=dg_lowp)
    assert_matches_oracle(dtheta, dtheta64, dtype, BACKWARD_TOL, "dtheta", dtheta_mag, lowp=dtheta_lowp)
    assert_matches_oracle(dphi, dphi64, dtype, BACKWARD_TOL, "dphi", dphi_mag, lowp=dphi_lowp)


def nlm_lse_row(backend, value):
    """y and lse of a (B, d, N) = (1, 1, 2) map whose first query has logits (value, value)."""
    theta = torch.tensor([[[value, 1.0]]], device=backend.device)
    phi = torch.tensor([[[1.0, 1.0]]], device=backend.device)
    g = torch.tensor([[[1.0, 2.0]]], device=backend.device)
    y, lse = backend.op("nlm_gaussian")(theta, phi, g, 1.0)
    assert torch.isnan(y[0, 0, 0]) and y[0, 0, 1].item() == 1.5  # as torch.softmax
    assert lse[0, 1].item() == pytest.approx(1 + math.log(2))
    return lse[0, 0].item()


@pytest.mark.parametrize("backend", backends())
def test_nlm_gaussian_lse_of_a_row_with_plus_inf(backend):
    """lse_i is the log-sum-exp of row i's logits: +inf for a row holding a +inf logit."""
    assert nlm_lse_row(backend, math.inf) == math.inf


@pytest.mark.parametrize("backend", backends())
def test_nlm_gaussian_lse_of_a_row_of_minus_inf(backend):
    """lse_i is the log-sum-exp of row i's logits: -inf for a row of -inf logits."""
    assert nlm_lse_row(backend, -math.inf) == -math.inf


@pytest.mark.parametrize("backend", backends())
def test_nlm_gaussian_bfloat16_inf_times_subnormal_is_inf(backend):
    """theta_0i = +inf against phi_0j = 1e-40 (subnormal in bfloat16) is a +inf logit, not NaN:
    lse_i = +inf. The bfloat16 GEMMs of the CPU library read subnormals as 0 at this size
    ((B, d, N) = (1, 8, 64)), which made the logit inf * 0 = NaN."""
    n = 64
    theta = torch.linspace(-1, 1, 8 * n).reshape(1, 8, n).to(torch.bfloat16)
    phi = torch.linspace(1, -1, 8 * n).reshape(1, 8, n).to(torch.bfloat16)
    theta[0, 0, n - 1], phi[0, 0, 0] = math.inf, 1e-40
    g = torch.ones(1, 1, n, dtype=torch.bfloat16)
    _, lse = backend.op("nlm_gaussian")(*(t.to(backend.device) for t in (theta, phi, g)), 1.0)
    _, lse64 = nlm_oracle(f64(theta), f64(phi), f64(g), 1.0)
    assert phi[0, 0, 0].item() > 0 and lse64[0, n - 1].item() == math.inf
    assert lse[0, n - 1].item() == math.inf


@pytest.mark.parametrize("backend", backends())
def test_nlm_gaussian_bfloat16_minus_inf_times_subnormal_has_probability_0(backend):
    """phi_0j = -inf against theta_0i = 1e-40 (subnormal in bfloat16) is a -inf logit: p_ij = 0,
    so dtheta_ki = scale sum_j ds_ij phi_kj stays finite for k > 0 (ds_ij phi_kj = 0 there), as
    float64 autograd gives. The backward recomputes the logits: a bfloat16 GEMM that reads the
    subnormal as 0 makes this one NaN, and with it query i's every gradient."""
    n, query = 64, 5
    theta = torch.linspace(-1, 1, 8 * n).reshape(1, 8, n).to(torch.bfloat16)
    phi = torch.linspace(1, -1, 8 * n).reshape(1, 8, n).to(torch.bfloat16)
    theta[0, 0, query], phi[0, 0, 0] = 1e-40, -math.inf
    g = torch.linspace(-2, 2, n).reshape(1, 1, n).to(torch.bfloat16)
    gy = torch.ones_like(g)
    td, pd, gd, gyd = (t.to(backend.device) for t in (theta, phi, g, gy))
    y, lse = backend.op("nlm_gaussian")(td, pd, gd, 1.0)
    dtheta = backend.op("_nlm_gaussian_backward")(gyd, td, pd, gd, y, lse, 1.0)[0].cpu()
    _, (dtheta64, _, _) = grads(lambda *t: nlm_oracle(*t, 1.0)[0], [f64(theta), f64(phi), f64(g)], f64(gy))
    assert torch.isfinite(lse[0, query]) and torch.isfinite(dtheta64[0, 1:, query]).all()
    torch.testing.assert_close(dtheta[0, 1:, query].double(), dtheta64[0, 1:, query], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_nlm_gaussian_cpu_minus_inf_logit_has_probability_0(dtype):
    """A key j whose logit is -inf has p_ij = 0, as torch.softmax: dg_j = sum_i p_ij dy_i = 0,
    and dtheta_i = scale sum_j ds_ij phi_j holds ds_ij * phi_j = 0 * inf = NaN (as the float64
    CPU kernel, the emulated CUDA kernel and eager autograd give)."""
    theta = torch.tensor([[[1.0, 1.0]]], dtype=dtype)  # (B, d, N) = (1, 1, 2)
    phi = torch.tensor([[[-math.inf, 0.5]]], dtype=dtype)  # key 0: logit -inf for both queries
    g = torch.tensor([[[1.0, 2.0]]], dtype=dtype)
    y, lse = CPU.op("nlm_gaussian")(theta, phi, g, 1.0)
    dtheta, _, dg = CPU.op("_nlm_gaussian_backward")(torch.ones_like(g), theta, phi, g, y, lse, 1.0)
    assert y.tolist() == [[[2.0, 2.0]]]
    assert dg[0, 0, 0].item() == 0.0 and torch.isnan(dtheta).all(), (dg.tolist(), dtheta.tolist())



@pytest.mark.parametrize("backend", backends())
def test_nlm_gaussian_backward_with_large_logits(backend):
    """Query 0 has logits 400 and 390 (exact float32 inputs): dtheta_0 within 10 % of float64 (eager
    float32 is within 2 %). The float32 lse is rounded to 3e-5 at 400, which once scaled the CPU
    backward's recomputed probabilities enough for ds = p (dp - D) to get the wrong sign."""
    theta = torch.tensor([[[20.0, 0.0]]], device=backend.device)  # (B, d, N) = (1, 1, 2)
    phi = torch.tensor([[[20.0, 19.5]]], device=backend.device)
    g = torch.tensor([[[1.0, -1.0]]], device=backend.device)
    gy = torch.tensor([[[1.0, 0.0]]], device=backend.device)
    y, lse = backend.op("nlm_gaussian")(theta, phi, g, 1.0)
    dtheta = backend.op("_nlm_gaussian_backward")(gy, theta, phi, g, y, lse, 1.0)[0]
    _, (dtheta64, _, _) = grads(lambda *t: nlm_oracle(*t, 1.0)[0], [f64(theta), f64(phi), f64(g)], f64(gy))
    assert dtheta[0, 0, 0].item() == pytest.approx(dtheta64[0, 0, 0].item(), rel=0.1)
