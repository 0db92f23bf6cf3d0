"""pytest-benchmark micro cases for Sparta on the CPU (design.md section 7):

    pytest benchmarks/test_micro_sparta.py --benchmark-only

Not part of the test suite (pyproject's testpaths is tests/). Compare the rows of a group by
their ratio; absolute times on shared machines are noise, so nothing asserts on time.
"""
import pytest
import torch

from fastrobust.bench import harness, sparta as bench_sparta

pytest.importorskip("pytest_benchmark")

MICRO_SHAPE = (8, 64, 16, 16)  # (N, C, H, W): one small CIFAR-like activation
# The reference first: the harness judges the others against its error (harness.judge).
IMPLEMENTATIONS = {harness.REFERENCE: bench_sparta.reference, harness.FUSED: bench_sparta.fused}


def micro_case(dtype: torch.dtype) -> harness.Case:
    n, c, h, w = MICRO_SHAPE
    k = bench_sparta.KERNEL_SIZE
    return harness.Case(suite="sparta-micro", label=f"N{n} C{c} H{h}", device="cpu", dtype=dtype,
                        mode="fwd+bwd", shapes=(("x", MICRO_SHAPE), ("weight", (c, 1, k, k)), ("bias", (c,))),
                        params=("weight", "bias"))


def checked_steps(case: harness.Case):
    """({impl: (fn, step)} of the implementations that passed the check, {impl: check})."""
    suite = harness.Suite(name=case.suite, cases=[case], implementations=IMPLEMENTATIONS,
                          make_inputs=bench_sparta.make_inputs)
    inputs = harness.build_inputs(suite, case)
    grad_outputs, expected = harness.oracle(case, bench_sparta.reference, inputs)
    checks = {}
    correct = harness.check_implementations(case, IMPLEMENTATIONS, inputs, grad_outputs, expected, checks)
    return correct, checks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_sparta_fwd_bwd(benchmark, impl, dtype):
    case = micro_case(dtype)
    correct, checks = checked_steps(case)
    assert impl in correct, f"{impl} is wrong, not timed: {checks[impl]}"
    benchmark.group = f"sparta fwd+bwd {case.label} {harness.dtype_name(dtype)}"
    benchmark(correct[impl][1])
