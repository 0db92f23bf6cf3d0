"""Shared pieces of the property tests (tests/test_properties_*.py).

- how many examples a property runs: `property_settings()` (200, or 2,000 in slow mode:
  `pytest --slow` or FASTROBUST_SLOW=1, see tests/conftest.py);
- hypothesis strategies for dtypes, values (normal, wide, ties, tiny; zeros, +-1e4, subnormals,
  NaN, +inf, -inf sprinkled at random positions) and layouts (contiguous, channels_last,
  transposed, a strided slice of a bigger tensor whose gaps hold a poison value);
- `assert_matches_oracle`: a kernel's output against a float64 oracle under the NaN / inf
  policy of design.md section 9.

The oracles themselves live in the test files, next to the contract they encode; none of them
imports fastrobust.reference or fastrobust._checks.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Optional, Sequence, Tuple

import torch
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

# -- how many examples -------------------------------------------------------------------------

DEFAULT_EXAMPLES = 200
SLOW_EXAMPLES = 2000


def slow_mode() -> bool:
    """True under `pytest --slow` (tests/conftest.py then sets FASTROBUST_SLOW=1) or FASTROBUST_SLOW=1."""
    return os.environ.get("FASTROBUST_SLOW", "").strip() not in ("", "0")


def max_examples() -> int:
    return SLOW_EXAMPLES if slow_mode() else DEFAULT_EXAMPLES


def property_settings():
    """max_examples() examples, deterministic (derandomized, no example database); no deadline:
    the emulator's launch time varies with the machine's load."""
    return settings(max_examples=max_examples(), deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# -- dtypes -----------------------------------------------------------------------------------

LOW_PRECISION = (torch.float16, torch.bfloat16)
# float32 and float64 in two cases of three, the 16-bit types in the third.
DTYPES = (torch.float32, torch.float64, torch.float32, torch.float64, torch.float16, torch.bfloat16)


def dtypes():
    return st.sampled_from(DTYPES)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type the ops do their maths in: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def coarser(*types: torch.dtype) -> torch.dtype:
    """The least precise of the given floating types (for a tolerance)."""
    return max(types, key=lambda t: torch.finfo(t).eps)


# -- values ------------------------------------------------------------------------------------

NONFINITE = (math.nan, math.inf, -math.inf)
LARGE = 1e4
# A subnormal of each dtype (e.g. 1e-40 in float32).
SUBNORMAL: Dict[torch.dtype, float] = {torch.float64: 1e-310, torch.float32: 1e-40, torch.bfloat16: 1e-40,
                                       torch.float16: 1e-6}
KINDS = ("normal", "wide", "ties", "tiny")


def extremes(dtype: torch.dtype, large: float = LARGE) -> Tuple[float, ...]:
    """Finite edge values: exact zeros of both signs, +-large, +-a subnormal of dtype."""
    sub = SUBNORMAL[dtype]
    return (0.0, -0.0, large, -large, sub, -sub)


def base_values(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n float64 values: normal N(0,1); wide (N(0,1) times magnitudes log-uniform in [1e-2, 1e2]);
    ties (multiples of 0.5 in [-1, 1]: many repeats and exact zeros); tiny (N(0, 1e-3))."""
    if kind == "normal":
        return torch.randn(n, generator=gen, dtype=torch.float64)
    if kind == "wide":
        magnitudes = 10 ** (4 * torch.rand(n, generator=gen, dtype=torch.float64) - 2)
        return torch.randn(n, generator=gen, dtype=torch.float64) * magnitudes
    if kind == "ties":
        return torch.randint(-2, 3, (n,), generator=gen).to(torch.float64) * 0.5
    if kind == "tiny":
        return 1e-3 * torch.randn(n, generator=gen, dtype=torch.float64)
    raise ValueError(kind)


@st.composite
def tensors(draw, shape: Sequence[int], dtype: torch.dtype, *, nonfinite: bool = False,
            nonfinite_values: Sequence[float] = NONFINITE, scale: float = 1.0, large: float = LARGE,
            kinds: Sequence[str] = KINDS) -> torch.Tensor:
    """A contiguous `dtype` tensor of `shape`: base values of a drawn kind times `scale` (from a
    drawn seed), then up to 3 finite edge values and, if `nonfinite`, 1 to 3 of
    `nonfinite_values`, each at a random position."""
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(tuple(kinds)))
    specials = list(draw(st.lists(st.sampled_from(extremes(dtype, large)), max_size=3)))
    if nonfinite:
        specials += draw(st.lists(st.sampled_from(tuple(nonfinite_values)), min_size=1, max_size=3))
    n = math.prod(shape)
    gen = torch.Generator().manual_seed(seed)
    values = base_values(kind, n, gen) * scale
    if n:
        for value, position in zip(specials, torch.randint(0, n, (len(specials),), generator=gen).tolist()):
            values[position] = value
    return values.reshape(tuple(shape)).to(dtype)


def nonfinite_targets(names: Sequence[str], one_in: int = 4):
    """Which inputs of an example get NaN / inf values: none in (one_in - 1) of one_in examples
    (so that most examples compare values), otherwise a non-empty subset of `names`."""
    names = tuple(names)
    subsets = st.sets(st.sampled_from(names), min_size=1).map(frozenset)
    return st.sampled_from(range(one_in)).flatmap(lambda i: subsets if i == one_in - 1 else st.just(frozenset()))


def draw_nonfinite(data, names: Sequence[str]):
    """nonfinite_targets drawn in a test (st.data()), recorded for --hypothesis-show-statistics."""
    bad = data.draw(nonfinite_targets(names), label="non-finite")
    event("non-finite in: " + (", ".join(sorted(bad)) or "nothing"))
    return bad


# -- layouts -----------------------------------------------------------------------------------

LAYOUTS = ("contiguous", "channels_last", "transposed", "strided")


def layouts(rank: int):
    """The layouts that apply to a tensor of this rank."""
    names = [name for name in LAYOUTS
             if not (name == "channels_last" and rank != 4) and not (name == "transposed" and rank < 2)]
    return st.sampled_from(names)


def draw_layout(data, t: torch.Tensor, label: str) -> torch.Tensor:
    """t in a layout drawn in a test (st.data())."""
    return with_layout(t, data.draw(layouts(t.dim()), label=f"{label} layout"))


def poison_value(dtype: torch.dtype):
    if dtype.is_floating_point:
        return math.nan
    if dtype == torch.bool:
        return True
    return 10**6  # an out-of-range class index, for labels


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The values of t (1-D or more) in another memory layout. `strided` is every other element
    along the last dimension of a bigger tensor, at a storage offset, whose other elements hold
    a poison value (NaN for floating tensors): a kernel that reads outside the view sees it.
    Always a new tensor (an op that writes it in place leaves t as it was)."""
    if layout == "contiguous":
        return t.clone(memory_format=torch.contiguous_format)
    if layout == "channels_last":
        return t.clone(memory_format=torch.channels_last)
    if layout == "transposed":
        dims = list(range(t.dim()))[::-1]
        return t.permute(dims).contiguous().permute(dims)
    if layout == "strided":
        big = torch.full((*t.shape[:-1], 2 * t.shape[-1] + 1), poison_value(t.dtype), dtype=t.dtype)
        view = big[..., 1::2]
        view.copy_(t)
        return view
    raise ValueError(layout)


def outside_view(view: torch.Tensor) -> torch.Tensor:
    """A copy of the elements of view's storage that the view does not cover."""
    storage = torch.empty(0, dtype=view.dtype, device=view.device).set_(view.untyped_storage())
    outside = torch.ones(storage.numel(), dtype=torch.bool)
    if view.numel():
        covered = torch.arange(storage.numel()).as_strided(view.shape, view.stride(), view.storage_offset())
        outside[covered.reshape(-1)] = False
    return storage[outside.to(storage.device)].clone()


# -- comparison with an oracle -----------------------------------------------------------------

def _where(mask: torch.Tensor, *tensors: torch.Tensor, limit: int = 6) -> str:
    idx = mask.nonzero()[:limit]
    rows = []
    for i in idx.tolist():
        rows.append(f"  at {tuple(i)}: " + ", ".join(f"{t[tuple(i)].item()!r}" for t in tensors))
    more = int(mask.sum()) - len(idx)
    return "\n".join(rows) + (f"\n  ... and {more} more" if more > 0 else "")


def assert_matches_oracle(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                          tol: Dict[torch.dtype, Tuple[float, float]], name: str,
                          mag: Optional[torch.Tensor] = None, free: Optional[torch.Tensor] = None,
                          lowp: Optional[torch.Tensor] = None) -> None:
    """The kernel's `actual` (computed in `dtype`) against the float64 oracle `expected`:

    1. non-finite masks are equal (NaN / inf reach exactly the outputs the oracle says);
    2. where both are non-finite, the class is the same (NaN, +inf or -inf);
    3. where both are finite, |actual - expected| <= atol * (1 + mag) + rtol * |expected| with
       (rtol, atol) = tol[dtype]. `mag` is the oracle's error magnitude: the same sums with every
       term in absolute value, propagated through the op's derivatives (the componentwise
       condition of the output). For well-scaled inputs it is O(1) and this is the tolerance
       table; for inputs near 1e4 whose sums cancel it grows with the terms, as float32 rounding
       does.
    `expected` is first rounded to the output's dtype (a value beyond float16's range is +-inf
    there too); outputs whose oracle lies within 2 rtol of the dtype's largest finite value may be
    finite or the same-signed inf. Elements in `free` are compared only where both are finite.
    For float16 / bfloat16 with `lowp` (the oracle's maths done by PyTorch in that dtype), values
    that miss 3. pass when the kernel's largest error is at most twice PyTorch's plus a floor
    (design.md section 5; fastrobust.testing.assert_close_to_oracle): for ops whose contract
    rounds intermediates to the 16-bit type, as PyTorch's eager maths does.
    """
    a = actual.detach().cpu().to(torch.float64)
    e64 = expected.detach().cpu().to(torch.float64)
    assert a.shape == e64.shape, f"{name}: shape {tuple(a.shape)}, oracle {tuple(e64.shape)}"
    e = e64.to(actual.dtype).to(torch.float64) if actual.dtype.is_floating_point else e64
    rtol, atol = tol[dtype]
    free = torch.zeros(a.shape, dtype=torch.bool) if free is None else torch.as_tensor(free).cpu().expand(a.shape)
    if actual.dtype.is_floating_point:
        top = torch.finfo(actual.dtype).max
        near_top = (e64.abs() > top * (1 - 2 * rtol)) & (e64.abs() < top * (1 + 2 * rtol))
        same_sign_inf = torch.isinf(a) & (torch.sign(a) == torch.sign(e64))
        free = free | (near_top & (torch.isfinite(a) | same_sign_inf))
    fa, fe = torch.isfinite(a), torch.isfinite(e)
    mismatch = (fa != fe) & ~free
    assert not mismatch.any(), (f"{name}: non-finite where the oracle is not, or finite where it is not "
                                f"(actual, oracle):\n{_where(mismatch, a, e)}")
    both_nonfinite = ~fa & ~fe & ~free
    wrong_class = both_nonfinite & ~((torch.isnan(a) & torch.isnan(e)) | (a == e))
    assert not wrong_class.any(), (f"{name}: wrong kind of non-finite value (actual, oracle):\n"
                                   f"{_where(wrong_class, a, e)}")
    both = fa & fe
    scale = torch.ones_like(e)
    if mag is not None:
        scale = 1 + torch.nan_to_num(f64(mag).expand(a.shape), nan=0.0, posinf=1e300)
    allowed = atol * scale + rtol * e.abs()
    err = (a - e).abs()
    over = both & ~(err <= allowed)
    if over.any() and lowp is not None and dtype in LOW_PRECISION:
        ref = f64(lowp)
        ref_ok = both & torch.isfinite(ref)
        ref_err = (ref - e).abs()[ref_ok].max().item() if ref_ok.any() else 0.0
        floor = 0.1 * atol * max(1.0, e[both].abs().max().item())
        worst = err[both].max().item()
        assert worst <= 2 * ref_err + floor, (
            f"{name} ({dtype}): largest error {worst:.3g} exceeds 2x PyTorch's {ref_err:.3g} (+ {floor:.3g}), "
            f"and elementwise (actual, oracle, allowed error):\n{_where(over, a, e, allowed)}")
        return
    assert not over.any(), (f"{name} ({dtype}): {int(over.sum())} of {a.numel()} values off "
                            f"(actual, oracle, allowed error):\n{_where(over, a, e, allowed)}")


def assert_equal_nan(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Bit-for-bit equal values (NaN equal to NaN, -0.0 equal to 0.0), same dtype."""
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype}, expected {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    a, e = actual.detach().cpu(), expected.detach().cpu()
    if a.is_floating_point():
        same = (a == e) | (torch.isnan(a) & torch.isnan(e))
    else:
        same = a == e
    assert same.all(), f"{name}: differs (actual, expected):\n{_where(~same, f64(a), f64(e))}"


def f64(t: torch.Tensor) -> torch.Tensor:
    """The exact values of t, as float64 on the CPU (what the oracles compute on)."""
    return t.detach().cpu().to(torch.float64)


def grads(fn, inputs, grad_out):
    """Autograd of a float64 oracle: d<fn(*inputs), grad_out>/d inputs."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, grad_out, allow_unused=True)



def finite(t: torch.Tensor) -> torch.Tensor:
    """t with every non-finite value replaced by 0 (for error magnitudes)."""
    return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
