"""Property tests of the attack ops (margin_loss and the PGD engine's pgd_step_, apgd_step_,
pgd_random_init_, pgd_update_best_) on every backend, against float64 oracles written here from
the op contracts (fastrobust/ops/margin_loss.py, fastrobust/ops/pgd.py): generated shapes
(0 rows, size-1 dims), layouts, dtypes and values (ties, zeros, +-1e4, subnormals, NaN, +-inf),
under the NaN / inf policy of design.md section 9 (tests/properties_support.py).

Example counts: properties_support.max_examples() per op and backend (200; 2,000 with --slow).
"""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastrobust
from fastrobust.testing import BACKWARD_TOL, CPU, FORWARD_TOL, backends

from properties_support import (acc_dtype, assert_matches_oracle, draw_layout, draw_nonfinite,
                                dtypes, f64, finite, outside_view, property_settings, tensors, with_layout)

pytestmark = [pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built"),
              pytest.mark.usefixtures("one_thread")]


def assert_bitwise_equal(actual, expected, name):
    """The same bits (NaN payloads and the sign of zero included)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
    if actual.numel() == 0:
        return
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
    same = actual.detach().cpu().contiguous().view(ints) == expected.detach().cpu().contiguous().view(ints)
    assert same.all(), f"{name}: bits differ at {same.logical_not().nonzero()[:6].tolist()}"


# -- margin_loss -----------------------------------------------------------------------------------

DLR_TINY = 1e-12


def ranking(values):
    """Class indices by decreasing value, ties to the lower class index."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def margin_row(z, y, t, kind, kappa):
    """One row's loss (fastrobust/ops/margin_loss.py), differentiable in z:
    cw    min(max_{i!=y} z_i - z_y, kappa); targeted min(z_t - max_{i!=t} z_i, kappa)
    dlr   -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12);
          targeted -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12),
    z_pi the sorted logits; every max and sort gives ties to the lowest class index."""
    order = ranking(z.tolist())
    excluded = t if (kind == "cw" and t is not None) else y
    other = next(i for i in order if i != excluded)
    if kind == "cw":
        raw = z[t] - z[other] if t is not None else z[other] - z[y]
        # min(raw, kappa): the margin's gradient passes up to and at kappa (with kappa = inf,
        # "unclamped", always; torch.clamp would stop it at raw == kappa); NaN (inf - inf) stays
        # NaN, without a gradient.
        if raw.item() <= kappa:
            return raw
        return torch.tensor(kappa if raw.item() > kappa else math.nan, dtype=z.dtype)
    if t is None:
        return -(z[y] - z[other]) / (z[order[0]] - z[order[2]] + DLR_TINY)
    return -(z[y] - z[t]) / (z[order[0]] - 0.5 * (z[order[2]] + z[order[3]]) + DLR_TINY)


def dlr_error_scales(z, y, t, loss, grad, grad_loss):
    """Error magnitudes of a DLR row's loss and gradient (cw's are differences of two logits,
    within the tolerance table). num and den = z_pi1 - z_pi3 (or - the mean of z_pi3, z_pi4)
    + 1e-12 are rounded sums: off by ~u dn and ~u dd below (1e-12 is below float32's resolution
    of most dens); L = -num/den and dL/dz_c = (a_c den + b_c num)/den^2, |a_c|, |b_c| <= 2 at the
    classes the loss names, move by (dn + |L| dd)/|den| and 2 (dd + dn)/den^2 + 2 |dL/dz_c| dd/|den|."""
    v = z.tolist()
    order = ranking(v)
    if t is None:
        other = next(i for i in order if i != y)
        num, den = v[y] - v[other], v[order[0]] - v[order[2]] + DLR_TINY
        dd, named = abs(v[order[0]] - v[order[2]]) + abs(den), {y, other, order[0], order[2]}
    else:
        mean = 0.5 * (v[order[2]] + v[order[3]])
        num, den = v[y] - v[t], v[order[0]] - mean + DLR_TINY
        dd = abs(v[order[2]] + v[order[3]]) + abs(v[order[0]] - mean) + abs(den)
        named = {y, t, order[0], order[2], order[3]}
    dn = abs(num)
    grad_mag = torch.zeros_like(z)
    for c in named:
        grad_mag[c] = abs(grad_loss) * 2 * (dd + dn) / den**2 + 2 * abs(grad[c].item()) * dd / abs(den)
    return (dn + abs(loss) * dd) / abs(den), grad_mag


def margin_oracle(logits, labels, targets, kind, kappa, grad_loss):
    """(loss, dloss/dlogits . grad_loss, their error magnitudes) row by row; a row holding a
    NaN logit has a NaN loss and a NaN gradient at every class."""
    rows, classes = logits.shape
    loss64, grad64 = torch.empty(rows, dtype=torch.float64), torch.empty(rows, classes, dtype=torch.float64)
    loss_mag, grad_mag = torch.zeros(rows, dtype=torch.float64), torch.zeros(rows, classes, dtype=torch.float64)
    for r in range(rows):
        z = logits[r].clone().requires_grad_(True)
        if torch.isnan(z).any():
            loss64[r], grad64[r] = math.nan, math.nan
            continue
        y, t = int(labels[r]), None if targets is None else int(targets[r])
        loss = margin_row(z, y, t, kind, kappa)
        grad64[r] = torch.autograd.grad(loss, z, grad_loss[r])[0] if loss.requires_grad else 0.0
        loss64[r] = loss.detach()
        if kind == "dlr" and torch.isfinite(z).all():
            loss_mag[r], grad_mag[r] = dlr_error_scales(z.detach(), y, t, loss64[r].item(), grad64[r],
                                                        grad_loss[r].item())
    return loss64, grad64, loss_mag, grad_mag


@pytest.mark.parametrize("backend", backends())
@property_settings()
@given(data=st.data())
def test_margin_loss(backend, data):
    """Loss and gradient against the oracle, ties to the lowest class; NaN anywhere in a row makes
    that row's loss and gradient NaN and nothing else; +-inf logits follow the formulas in IEEE
    arithmetic (loss: exact non-finite classes). A formula's gradient at an infinite logit is
    not the contract's: rows holding +-inf have their gradient compared where both are finite."""
    dtype = data.draw(dtypes(), label="dtype")
    kind = data.draw(st.sampled_from(["cw", "dlr"]), label="kind")
    targeted = data.draw(st.booleans(), label="targeted")
    kappa = data.draw(st.sampled_from([math.inf, 0.5, 0.0, -1.0, 1e4]), label="kappa") if kind == "cw" else math.inf
    rows = data.draw(st.integers(0, 9), label="rows")
    classes = data.draw(st.integers(4 if (kind == "dlr" and targeted) else 3 if kind == "dlr" else 2, 40),
                        label="classes")
    bad = draw_nonfinite(data, ["logits"])
    logits = data.draw(tensors((rows, classes), dtype, nonfinite="logits" in bad), label="logits")
    labels = torch.tensor(data.draw(st.lists(st.integers(0, classes - 1), min_size=rows, max_size=rows),
                                    label="labels"), dtype=torch.int64).reshape(rows)
    targets = None
    if targeted:
        targets = torch.tensor(data.draw(st.lists(st.integers(0, classes - 1), min_size=rows, max_size=rows),
                                         label="targets"), dtype=torch.int64).reshape(rows)
    grad_loss = data.draw(tensors((rows,), dtype), label="grad_loss")
    ld = draw_layout(data, logits, "logits").to(backend.device)
    yd = draw_layout(data, labels, "labels").to(backend.device)
    td = None if targets is None else draw_layout(data, targets, "targets").to(backend.device)
    gd = grad_loss.to(backend.device)

    loss = backend.op("margin_loss")(ld, yd, td, kind, kappa)
    if data.draw(st.booleans(), label="through autograd"):
        leaf = ld.detach().requires_grad_(True)
        grad, = torch.autograd.grad(backend.op("margin_loss")(leaf, yd, td, kind, kappa), leaf, gd)
    else:
        grad = backend.op("_margin_loss_backward")(gd, ld, yd, td, kind, kappa)

    loss64, grad64, loss_mag, grad_mag = margin_oracle(f64(logits), labels, targets, kind, kappa, f64(grad_loss))
    assert loss.dtype == dtype and loss.shape == (rows,) and grad.dtype == dtype and grad.shape == logits.shape
    assert_matches_oracle(loss, loss64, dtype, FORWARD_TOL, "loss", loss_mag)
    inf_rows = (torch.isinf(f64(logits)).any(1) & ~torch.isnan(f64(logits)).any(1))[:, None]
    assert_matches_oracle(grad, grad64, dtype, BACKWARD_TOL, "grad", grad_mag, free=inf_rows)
    assert torch.isnan(grad.cpu()[torch.isnan(f64(logits)).any(1)]).all()


# -- the PGD engine: shared pieces -----------------------------------------------------------------

L2_TINY = 1e-12
ROW_VALUES = (0.0, 1e-40, 1e-3, 0.03, 0.25, 1.0, 8.0, 1e4)  # eps / alpha / eta: finite, >= 0
BOXES = ((0.0, 1.0), (-1.0, 1.0), (0.25, 0.25), (-math.inf, math.inf), (-1e4, 1e4))


@st.composite
def row_shapes(draw, emulated):
    """(rows, *row dims): 0 to 5 rows of 1 to 3 dims (a 4-D shape allows channels_last)."""
    rows = draw(st.integers(0, 5), label="rows")
    dims = draw(st.lists(st.integers(1, 5 if emulated else 8), min_size=1, max_size=3), label="row dims")
    return (rows, *dims)


@st.composite
def row_values(draw, rows, dtype, name):
    """An eps / alpha / eta tensor in the op maths type: shape (), (1,) or (rows,)."""
    shape = draw(st.sampled_from([(), (1,), (rows,)]), label=f"{name} shape")
    values = draw(st.lists(st.sampled_from(ROW_VALUES), min_size=math.prod(shape), max_size=math.prod(shape)),
                  label=name)
    return torch.tensor(values, dtype=acc_dtype(dtype)).reshape(shape)


def per_row(v, x):
    """eps / alpha as float64, shaped to broadcast over x's rows."""
    return f64(v).reshape(-1, *([1] * (x.dim() - 1)))


def row_norm(t):
    """The L2 norm of every row (dim 0), shaped to broadcast over t."""
    return t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def direction(grad, norm):
    """sign(g) for L-inf (torch.sign: sign(NaN) = 0); g / (||g|| + 1e-12) per row for L2."""
    return grad.sign() if norm == "linf" else grad / (row_norm(grad) + L2_TINY)


def project(v, x0, eps, norm, lo, hi):
    """Onto the eps-ball around x0 (L-inf: clamp elementwise, NaN bounds give NaN as
    torch.minimum / maximum; L2: delta * min(1, eps / ||delta||), 1 where ||delta|| = 0), then
    the box [lo, hi] (torch.clamp: NaN stays NaN)."""
    if norm == "linf":
        v = torch.minimum(torch.maximum(v, x0 - eps), x0 + eps)
    else:
        delta = v - x0
        dnorm = row_norm(delta)
        v = x0 + delta * torch.where(dnorm > eps, eps / torch.where(dnorm > 0, dnorm, 1.0), 1.0)
    return v.clamp(lo, hi)


def row_mask(mask, x):
    """A per-row (N,) mask shaped to broadcast over x."""
    return mask.reshape(-1, *([1] * (x.dim() - 1)))


def row_mixed(mag, norm):
    """An elementwise rounding scale, plus for L2 its row maximum: the row's norms carry every
    element's rounding error into each output of the row (by at most that element's)."""
    if norm == "linf" or mag.numel() == 0:
        return mag
    return mag + mag.flatten(1).amax(1).reshape(-1, *([1] * (mag.dim() - 1)))


def in_place_layout(data, t, label):
    """A layout the in-place ops write (every row one dense block): contiguous, channels_last,
    or rows [1, 1 + n) of a bigger contiguous tensor whose other rows hold NaN."""
    names = ["contiguous", "row slice"] + (["channels_last"] if t.dim() == 4 else [])
    layout = data.draw(st.sampled_from(names), label=f"{label} layout")
    if layout != "row slice":
        return with_layout(t, layout)
    big = torch.full((t.shape[0] + 2, *t.shape[1:]), math.nan, dtype=t.dtype)
    view = big[1:1 + t.shape[0]]
    view.copy_(t)
    return view


def same_layout(ref, values):
    """values in a new tensor laid out as ref, in a NaN-filled copy of the storage around ref."""
    base = ref._base if ref._base is not None else ref
    storage = torch.full_like(base, math.nan)
    view = storage.as_strided(ref.size(), ref.stride(), ref.storage_offset() - base.storage_offset())
    view.copy_(values)
    return view


def step_case(data, backend, extra):
    """dtype, norm, shape, the inputs drawn non-finite (among x, x0, grad and `extra`), and
    x0, x, grad: what a PGD or APGD step case starts from."""
    dtype = data.draw(dtypes(), label="dtype")
    norm = data.draw(st.sampled_from(["linf", "l2"]), label="norm")
    shape = data.draw(row_shapes(backend.emulated), label="shape")
    bad = draw_nonfinite(data, ["x", "x0", "grad", extra])
    return (dtype, norm, shape, bad) + step_values(data, shape, dtype, bad)


def step_values(data, shape, dtype, bad):
    """x0, x (near x0 or anywhere) and grad for a PGD step."""
    x0 = data.draw(tensors(shape, dtype, nonfinite="x0" in bad), label="x0")
    x = data.draw(tensors(shape, dtype, nonfinite="x" in bad), label="x")
    if data.draw(st.booleans(), label="x near x0"):
        x = (f64(x0) + 0.1 * f64(x)).to(dtype)
    grad = data.draw(tensors(shape, dtype, nonfinite="grad" in bad), label="grad")
    return x0, x, grad


def l2_rules(norm, out, inputs, grad, rows_changed):
    """For L2 (which mixes a row), the NaN / inf rules the oracle's formula does not settle:
    rows with a non-finite input are compared where both are finite (free), but a NaN in a row's
    grad makes the whole row NaN, and a NaN x / x0 / noise element is NaN. Returns `free`."""
    if norm != "l2" or out.numel() == 0:
        return None
    rows_bad = torch.zeros(out.shape[0], dtype=torch.bool)
    must_nan = torch.zeros(out.shape, dtype=torch.bool)
    for t in inputs:
        if t is not None:
            rows_bad |= ~torch.isfinite(f64(t)).flatten(1).all(1)
            must_nan |= torch.isnan(f64(t))
    rows_bad |= ~torch.isfinite(f64(grad)).flatten(1).all(1)
    must_nan |= row_mask(torch.isnan(f64(grad)).flatten(1).any(1), out)
    must_nan &= row_mask(rows_changed, out)
    assert torch.isnan(f64(out)[must_nan]).all(), "L2: a NaN input did not give NaN"
    return row_mask(rows_bad, out)


# -- pgd_step_ -------------------------------------------------------------------------------------

def pgd_step_oracle(x, x0, grad, eps, alpha, active, noise, norm, lo, hi, descent):
    """pgd_step_ (fastrobust/ops/pgd.py): x +- alpha * dir(grad) (+ noise), projected onto the
    eps-ball around x0 and the box; inactive rows keep x."""
    step = -per_row(alpha, x) if descent else per_row(alpha, x)
    new = x + step * direction(grad, norm)
    if noise is not None:
        new = new + noise
    new = project(new, x0, per_row(eps, x), norm, lo, hi)
    return new if active is None else torch.where(row_mask(active, x), new, x)


@pytest.mark.parametrize("backend", backends())
@property_settings()
@given(data=st.data())
def test_pgd_step(backend, data):
    """x against the oracle (L-inf elementwise: equal non-finite masks; L2: see l2_rules);
    inactive rows and the storage around x bit-for-bit untouched."""
    dtype, norm, shape, bad, x0, x, grad = step_case(data, backend, "noise")
    rows = shape[0]
    noise = None
    if data.draw(st.booleans(), label="with noise"):
        noise = data.draw(tensors(shape, dtype, nonfinite="noise" in bad, scale=0.1), label="noise")
    active = None
    if data.draw(st.booleans(), label="with active"):
        active = torch.tensor(data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows), label="active"),
                              dtype=torch.bool).reshape(rows)
    eps = data.draw(row_values(rows, dtype, "eps"))
    alpha = data.draw(row_values(rows, dtype, "alpha"))
    lo, hi = data.draw(st.sampled_from(BOXES), label="box")
    descent = data.draw(st.booleans(), label="descent")

    xd = in_place_layout(data, x, "x")
    around = outside_view(xd)
    x0d, gd = draw_layout(data, x0, "x0"), draw_layout(data, grad, "grad")
    nd = None if noise is None else draw_layout(data, noise, "noise")
    dev = lambda t: None if t is None else t.to(backend.device)
    xd = xd.to(backend.device) if backend.device != "cpu" else xd
    backend.op("pgd_step_")(xd, dev(x0d), dev(gd), dev(eps), dev(alpha), dev(active), dev(nd), norm, lo, hi,
                            descent)

    expected = pgd_step_oracle(f64(x), f64(x0), f64(grad), eps, alpha, active,
                               None if noise is None else f64(noise), norm, lo, hi, descent)
    changed = torch.ones(rows, dtype=torch.bool) if active is None else active
    if backend.device == "cpu":
        assert_bitwise_equal(outside_view(xd), around, "storage around x")
    assert_bitwise_equal(xd.cpu()[~changed], x[~changed], "inactive rows")
    free = l2_rules(norm, xd.cpu(), (x, x0, noise), grad, changed)
    terms = (x, x0) if noise is None else (x, x0, noise)  # the sum's rounding scale
    mag = row_mixed(sum(finite(f64(t)).abs() for t in terms) + per_row(alpha, x) + per_row(eps, x), norm)
    assert_matches_oracle(xd, expected, dtype, FORWARD_TOL, "x", mag, free=free)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("op", ["pgd_step_", "apgd_step_"])
def test_linf_projection_keeps_a_nan_x0(backend, op):
    """pgd_step_ / apgd_step_ L-inf: min(max(x_new, x0 - eps), x0 + eps) with x0 = NaN is NaN
    (design.md section 9: a NaN x or x0 element stays NaN through the clamps)."""
    x = torch.tensor([[0.5, 0.5]], device=backend.device)
    x0 = torch.tensor([[math.nan, 0.5]], device=backend.device)
    grad = torch.ones_like(x)
    eps = torch.tensor([0.1], device=backend.device)
    if op == "pgd_step_":
        backend.op(op)(x, x0, grad, eps, eps, None, None, "linf", 0.0, 1.0, False)
    else:
        backend.op(op)(x, x.clone(), x0, grad, eps, eps, 0.75, "linf", 0.0, 1.0)
    assert torch.isnan(x[0, 0]).item() and x[0, 1].item() == pytest.approx(0.6 if op == "pgd_step_" else 0.575)


# -- apgd_step_ ------------------------------------------------------------------------------------

def apgd_oracle(x, x_prev, x0, grad, eta, eps, momentum, norm, lo, hi):
    """apgd_step_ (fastrobust/ops/pgd.py): z = P(x + eta dir(grad)),
    x_new = P(x + a (z - x) + (1 - a)(x - x_prev)), P the projection onto the eps-ball and the
    box. Returns (x_new, the new x_prev = x)."""
    e = per_row(eps, x)
    z = project(x + per_row(eta, x) * direction(grad, norm), x0, e, norm, lo, hi)
    return project(x + momentum * (z - x) + (1 - momentum) * (x - x_prev), x0, e, norm, lo, hi), x


@pytest.mark.parametrize("backend", backends())
@property_settings()
@given(data=st.data())
def test_apgd_step(backend, data):
    """x against the oracle, x_prev bit-for-bit the old x, the storage around them untouched."""
    dtype, norm, shape, bad, x0, x, grad = step_case(data, backend, "x_prev")
    rows = shape[0]
    x_prev = data.draw(tensors(shape, dtype, nonfinite="x_prev" in bad), label="x_prev")
    if data.draw(st.booleans(), label="x_prev near x"):
        x_prev = (f64(x) + 0.05 * f64(x_prev)).to(dtype)
    eta = data.draw(row_values(rows, dtype, "eta"))
    eps = data.draw(row_values(rows, dtype, "eps"))
    momentum = data.draw(st.sampled_from([0.75, 1.0, 0.0, 0.5]), label="momentum")
    lo, hi = data.draw(st.sampled_from(BOXES), label="box")

    xd = in_place_layout(data, x, "x")
    xpd = same_layout(xd, x_prev)  # the op requires x's strides for x_prev
    around = outside_view(xd), outside_view(xpd)
    x0d, gd = draw_layout(data, x0, "x0"), draw_layout(data, grad, "grad")
    dev = lambda t: t.to(backend.device)
    if backend.device != "cpu":
        xd, xpd = dev(xd), dev(xpd)
    backend.op("apgd_step_")(xd, xpd, dev(x0d), dev(gd), dev(eta), dev(eps), momentum, norm, lo, hi)

    expected, _ = apgd_oracle(f64(x), f64(x_prev), f64(x0), f64(grad), eta, eps, momentum, norm, lo, hi)
    if backend.device == "cpu":
        assert_bitwise_equal(outside_view(xd), around[0], "storage around x")
        assert_bitwise_equal(outside_view(xpd), around[1], "storage around x_prev")
    assert_bitwise_equal(xpd.cpu(), x, "x_prev (the old x)")
    free = l2_rules(norm, xd.cpu(), (x, x0, x_prev), grad, torch.ones(rows, dtype=torch.bool))
    # The rounding scale: two projections and the momentum mix each round sums of these terms.
    mag = row_mixed(4 * (sum(finite(f64(t)).abs() for t in (x, x0, x_prev)) + per_row(eta, x) + per_row(eps, x)), norm)
    assert_matches_oracle(xd, expected, dtype, FORWARD_TOL, "x", mag, free=free)


# -- pgd_random_init_ ------------------------------------------------------------------------------

def random_init(backend, x, x0, eps, norm, lo, hi, seed, offset):
    out = x.clone().to(backend.device)
    backend.op("pgd_random_init_")(out, x0.to(backend.device), eps.to(backend.device), norm, lo, hi, seed, offset)
    return out.cpu()


@pytest.mark.parametrize("backend", backends())
@property_settings()
@given(data=st.data())
def test_pgd_random_init(backend, data):
    """The start's invariants (its numbers come from a Philox stream): x = clip_[lo,hi](x0 + delta)
    with delta in the eps-ball (L-inf: elementwise between clip(x0 - eps) and clip(x0 + eps);
    L2: ||x - clip(x0)|| <= eps per row, clipping being non-expansive), NaN exactly where x0 is
    NaN, whatever x held before; the same (seed, offset) gives the same start, on the CPU too; a
    different offset a different one wherever the ball has room inside the box."""
    dtype = data.draw(dtypes(), label="dtype")
    norm = data.draw(st.sampled_from(["linf", "l2"]), label="norm")
    shape = data.draw(row_shapes(backend.emulated), label="shape")
    rows = shape[0]
    bad = draw_nonfinite(data, ["x0", "x"])
    x0 = data.draw(tensors(shape, dtype, nonfinite="x0" in bad), label="x0")
    x = data.draw(tensors(shape, dtype, nonfinite="x" in bad), label="x (overwritten)")
    eps = data.draw(row_values(rows, dtype, "eps"))
    lo, hi = data.draw(st.sampled_from(BOXES), label="box")
    seed = data.draw(st.integers(0, 2**63 - 1), label="seed")
    offset = data.draw(st.integers(0, 2**40), label="offset")

    xd = in_place_layout(data, x, "x")
    around = outside_view(xd)
    if backend.device == "cpu":
        backend.op("pgd_random_init_")(xd, x0, eps, norm, lo, hi, seed, offset)
        assert_bitwise_equal(outside_view(xd), around, "storage around x")
        out = xd
    else:
        out = random_init(backend, xd, x0, eps, norm, lo, hi, seed, offset)
    a, start, e = f64(out), f64(x0), per_row(eps, x0)
    rtol, atol = FORWARD_TOL[dtype]

    assert torch.equal(torch.isnan(a), torch.isnan(start)), "NaN exactly where x0 is NaN"
    ok = ~torch.isnan(start)
    assert ((a[ok] >= lo) & (a[ok] <= hi)).all(), "inside the box"
    slack = atol + rtol * (finite(start).abs() + e)  # x0 + delta rounded to dtype
    if norm == "linf":
        below, above = (start - e).clamp(lo, hi), (start + e).clamp(lo, hi)
        assert ((a >= below - slack) & (a <= above + slack))[ok].all(), "inside the L-inf ball"
    else:
        finite_rows = torch.isfinite(start).flatten(1).all(1)
        dist = (a - start.clamp(lo, hi)).flatten(1).norm(dim=1)
        radius = f64(eps).reshape(-1).expand(rows)
        rounding = atol + rtol * (finite(start).abs().flatten(1).amax(1) + radius)  # per element of x
        allowed = radius * (1 + rtol) + rounding * math.sqrt(math.prod(shape[1:]))
        assert (dist <= allowed)[finite_rows].all(), "inside the L2 ball"

    # Element i draws word i of the stream in memory order: compare starts of the same layout.
    again = random_init(backend, same_layout(xd.cpu(), torch.zeros_like(x)), x0, eps, norm, lo, hi, seed, offset)
    assert_bitwise_equal(again, out.cpu(), "same seed and offset, other initial x")
    if backend.name != "cpu":
        torch.testing.assert_close(random_init(CPU, xd.cpu(), x0, eps, norm, lo, hi, seed, offset), out.cpu(),
                                   rtol=rtol, atol=atol, equal_nan=True, msg="the same start as the CPU's")
    # Elements with room: a ball inside the box around a finite x0, spanning at least 2^12 of
    # dtype's values (a narrower one may round two different deltas to the same x).
    ulp = torch.finfo(dtype).eps * start.abs().clamp(min=torch.finfo(dtype).tiny)
    room = torch.isfinite(start) & (e > 2**12 * ulp) & (start - e > lo) & (start + e < hi)
    if room.any():
        other = f64(random_init(backend, x, x0, eps, norm, lo, hi, seed, offset + 1))
        assert not torch.equal(other[room], a[room]), "a different offset gives a different start"
        if norm == "linf" and int(room.sum()) >= 16:
            spread = ((a - start).abs() / e)[room]
            assert spread.max() > 0.25, "L-inf deltas spread over the ball"


# -- pgd_update_best_ ------------------------------------------------------------------------------

LOSSES = (0.0, -0.0, 1.0, 2.0, -1.0, 0.5, 1e4, -1e4, 1e-40, math.nan, math.inf, -math.inf)


def update_best_oracle(best_x, best_loss, success, x, loss, is_adv, mode, nonfinite):
    """pgd_update_best_ (fastrobust/ops/pgd.py), row by row. A loss is compared as best_loss
    holds it (in best_loss's dtype); a non-finite loss is never taken and never a success.
    mode "loss": a strictly higher loss wins; "first_success": the first successful point is
    kept for good, until then the highest loss; "last_success": every successful point wins,
    until the first the highest loss. success |= is_adv (finite loss); nonfinite |= !finite."""
    best_x, best_loss, success = best_x.clone(), best_loss.clone(), success.clone()
    nonfinite = None if nonfinite is None else nonfinite.clone()
    stored = loss.to(best_loss.dtype)
    for r in range(best_x.shape[0]):
        value = stored[r].item()
        usable = math.isfinite(value)
        higher = value > best_loss[r].item()
        if mode == "loss":
            take = usable and higher
        elif mode == "first_success":
            take = usable and not success[r] and (bool(is_adv[r]) or higher)
        else:
            take = usable and (bool(is_adv[r]) or (not success[r] and higher))
        if take:
            best_x[r], best_loss[r] = x[r], stored[r]
        success[r] |= bool(is_adv[r]) and usable
        if nonfinite is not None:
            nonfinite[r] |= not usable
    return best_x, best_loss, success, nonfinite


@pytest.mark.parametrize("backend", backends())
@property_settings()
@given(data=st.data())
def test_pgd_update_best(backend, data):
    """best_x, best_loss, success, nonfinite bit-for-bit the oracle's (nothing is computed, only
    chosen); the storage around best_x untouched."""
    dtype = data.draw(dtypes(), label="dtype")
    loss_dtype = data.draw(dtypes(), label="loss dtype")
    mode = data.draw(st.sampled_from(["loss", "first_success", "last_success"]), label="mode")
    shape = data.draw(row_shapes(backend.emulated), label="shape")
    rows = shape[0]
    # Losses are drawn with NaN and +-inf among them below; points may hold any value (copied).
    best_x = data.draw(tensors(shape, dtype, nonfinite=data.draw(st.booleans(), label="best_x non-finite")),
                       label="best_x")
    x = data.draw(tensors(shape, dtype, nonfinite=data.draw(st.booleans(), label="x non-finite")), label="x")
    acc = acc_dtype(dtype)
    def lists(values, label):
        return data.draw(st.lists(st.sampled_from(values), min_size=rows, max_size=rows), label=label)

    best_loss = torch.tensor(lists(LOSSES[:-3] + (-math.inf,), "best_loss"), dtype=acc).reshape(rows)
    loss = torch.tensor(lists(LOSSES, "loss"), dtype=torch.float64).to(loss_dtype).reshape(rows)
    success = torch.tensor(lists((False, True), "success"), dtype=torch.bool).reshape(rows)
    is_adv = torch.tensor(lists((False, True), "is_adv"), dtype=torch.bool).reshape(rows)
    nonfinite = None
    if data.draw(st.booleans(), label="with nonfinite"):
        nonfinite = torch.tensor(lists((False, True), "nonfinite"), dtype=torch.bool).reshape(rows)

    expected = update_best_oracle(best_x, best_loss, success, x, loss, is_adv, mode, nonfinite)
    bxd = in_place_layout(data, best_x, "best_x")
    around = outside_view(bxd)
    xd = draw_layout(data, x, "x")
    state = [t.clone().to(backend.device) if t is not None else None for t in (best_loss, success, nonfinite)]
    if backend.device != "cpu":
        bxd = bxd.to(backend.device)
    backend.op("pgd_update_best_")(bxd, state[0], state[1], xd.to(backend.device), loss.to(backend.device),
                                   is_adv.to(backend.device), mode, state[2])

    if backend.device == "cpu":
        assert_bitwise_equal(outside_view(bxd), around, "storage around best_x")
    assert_bitwise_equal(bxd.cpu(), expected[0], "best_x")
    assert_bitwise_equal(state[0].cpu(), expected[1], "best_loss")
    assert torch.equal(state[1].cpu(), expected[2]), ("success", state[1].tolist(), expected[2].tolist())
    if nonfinite is not None:
        assert torch.equal(state[2].cpu(), expected[3]), ("nonfinite", state[2].tolist(), expected[3].tolist())
