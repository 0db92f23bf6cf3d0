"""The ODE benchmark suite (fastrobust/bench/ode.py): a quick CPU run end to end, and its cases."""
import json
import math

import pytest
import torch

from fastrobust.cli import main as cli_main

pytest.importorskip("torchdiffeq")

GRADS = {"grad_z"} | {f"grad_{n}" for n in ("conv1_weight", "norm1_weight", "norm1_bias", "conv2_weight",
                                             "norm2_weight", "norm2_bias")}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_ode")
    # torch.compile takes minutes on a small CPU: the smoke run leaves it out.
    rc = cli_main(["bench", "ode", "--device", "cpu", "--quick", "--no-compile", "--out", str(out), "--quiet"])
    return rc, out, json.loads((out / "ode-cpu-quick.json").read_text())


def test_quick_run_checks_and_times_every_implementation(quick_run):
    rc, out, result = quick_run
    assert rc == 0
    assert result["complete"] and result["suite"] == "ode"
    assert [c["case"] for c in result["cases"]] == ["tisode euler B2 C16 5x5 fp32 fwd+bwd"]
    for case in result["cases"]:
        impls = case["implementations"]
        # --no-compile leaves out both compiled baselines; cuda_graph is CUDA only
        assert set(impls) == {"reference", "fused"}, case["case"]
        for name, entry in impls.items():
            where = (case["case"], name)
            assert "error" not in entry and entry["correct"], where
            assert set(entry["errors"]) == {"out"} | GRADS, where  # the output and all seven gradients
            assert entry["err_over_tol"] <= 1.0, where  # same numbers as odeint to rounding
            assert math.isfinite(entry["median_s"]) and entry["median_s"] > 0, where
        ratio = case["speedup_of_fused"]["reference"]
        assert math.isfinite(ratio) and ratio > 0
    assert (out / "ode-cpu-quick.csv").read_text().count("\n") > len(result["cases"])


def test_cases_are_the_issue_shapes():
    from fastrobust.bench import ode as bench_ode

    for device in ("cpu", "cuda"):
        suite = bench_ode.build_suite(device)
        assert [c.label for c in suite.cases] == ["tisode euler B128 C64 13x13", "tisode euler B128 C64 3x3"]
        assert {c.dtype for c in suite.cases} == {torch.float32}
        assert all(c.mode == "fwd+bwd" for c in suite.cases)
        assert ("cuda_graph" in suite.implementations) == (device == "cuda")
        assert {"fused", "reference", "compiled", "compiled_odeint"} <= set(suite.implementations)


def test_every_implementation_takes_the_case_parameters():
    """fused and reference bind the case's tensors: the harness's gradients reach all of them."""
    from fastrobust.bench import harness, ode as bench_ode

    suite = bench_ode.build_suite("cpu", quick=True)
    case = suite.cases[0]
    inputs = harness.build_inputs(suite, case)
    args = [inputs[n] for n in case.input_names]
    outs = [bench_ode.fused(case)(*args), bench_ode.reference(case)(*args)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(outs[0].sum(), args)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
