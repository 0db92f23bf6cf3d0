"""The NLM benchmark suite (fastrobust/bench/nlm.py): a quick CPU run end to end, its cases,
its inputs and its extra metrics (TFLOP/s, peak memory)."""
import json
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch

import fastrobust
from fastrobust.cli import main as cli_main

# benchmarks/ is a folder of the checkout, not part of the package.
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from fastrobust.bench import harness, nlm as bench_nlm, results  # noqa: E402

HAS_OPS = fastrobust.HAS_EXT and all(hasattr(torch.ops.fastrobust, op) for op in ("nlm_gaussian", "median3x3"))
KINDS = ("gaussian", "dot", "median", "block")
EXPECTED_IMPLEMENTATIONS = {"gaussian": {"reference", "fused", "sdpa"}, "dot": {"reference", "fused"},
                            "median": {"reference", "fused"}, "block": {"reference", "fused"}}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_nlm")
    # torch.compile takes minutes on a small CPU: the smoke run leaves it out.
    rc = cli_main(["bench", "nlm", "--device", "cpu", "--quick", "--no-compile", "--out", str(out), "--quiet"])
    return rc, out, json.loads((out / "nlm-cpu-quick.json").read_text())


@pytest.mark.skipif(not HAS_OPS, reason="fastrobust._C has no nlm_gaussian or median3x3 kernel")
def test_quick_run_checks_and_times_every_implementation(quick_run):
    rc, out, result = quick_run
    assert rc == 0
    assert result["complete"] and result["suite"] == "nlm"
    assert {(c["kind"], c["dtype"]) for c in result["cases"]} == {(k, d) for k in KINDS for d in ("fp32", "bf16")}
    for case in result["cases"]:
        impls = case["implementations"]
        # "kernel" (the kernel forced) is timed on CUDA only: on the CPU "fused" is the kernel
        assert set(impls) == EXPECTED_IMPLEMENTATIONS[case["kind"]] | {"kernel"} | ({"sdpa"} if "sdpa" in impls else set())
        assert impls["kernel"].get("skipped"), case["case"]
        for name, entry in impls.items():
            where = (case["case"], name)
            assert "error" not in entry, where
            if entry.get("skipped"):
                assert name == "kernel" or (name == "sdpa" and case["kind"] != "gaussian"), where
                continue
            assert entry["correct"], where
            assert math.isfinite(entry["median_s"]) and entry["median_s"] > 0, where
            assert entry["peak_memory_bytes"] > 0, where
            if case["kind"] in ("gaussian", "dot"):
                assert entry["tflops"] > 0, where
            else:
                assert entry["tflops"] is None, where
        assert all(math.isfinite(r) and r > 0 for r in case["speedup_of_fused"].values() if r), case["case"]
        # on the CPU, auto keeps our kernel (SDPA is chosen on CUDA GPUs only)
        assert case.get("path") == ("kernel" if case["kind"] in ("gaussian", "block") else None), case["case"]
    csv_text = (out / "nlm-cpu-quick.csv").read_text()
    assert csv_text.splitlines()[0].endswith("flops,tflops,peak_memory_bytes")
    assert csv_text.count("\n") > len(result["cases"])
    assert (out / "nlm-cpu-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not HAS_OPS, reason="fastrobust._C has no nlm_gaussian or median3x3 kernel")
def test_quick_run_fused_gaussian_keeps_less_than_the_affinity(quick_run):
    """The fused op saves O(B * N) row statistics for backward, the reference the N x N
    softmax: at N = 1024 the fused op must keep less."""
    _, _, result = quick_run
    checked = 0
    for case in result["cases"]:
        if case["kind"] == "gaussian" and case["mode"] == "fwd+bwd":
            saved = case["saved_activation_bytes"]
            b, c, h, w = case["shapes"]["g"]
            d, n = case["shapes"]["theta"][1], h * w
            size = {"fp32": 4, "bf16": 2}[case["dtype"]]
            # theta, phi, g, y and a float32 log-sum-exp per row, nothing of size N x N
            assert saved["fused"] <= (2 * d + 2 * c) * b * n * size + 4 * b * n, case["case"]
            if n == 1024:
                assert saved["fused"] < saved["reference"], case["case"]
                checked += 1
    assert checked == 2


# ----------------------------------------------------------------------------- cases


def test_cuda_cases_are_the_issue_shapes():
    suite = bench_nlm.build_suite("cuda")
    labels = {c.label for c in suite.cases}
    gaussian = {"B64 C256 d128 32x32", "B32 C256 d128 56x56", "B128 C512 d256 16x16", "B8 C1024 d512 28x28"}
    assert labels == ({f"gaussian {s}" for s in gaussian} | {f"dot {s}" for s in gaussian}
                      | {"median B128 C256 32x32", "block layer1 B128 C64 32x32", "block layer3 B128 C256 8x8"})
    counts = {}
    for c in suite.cases:
        counts[(c.kind, c.mode)] = counts.get((c.kind, c.mode), 0) + 1
    assert counts == {("gaussian", "fwd"): 8, ("gaussian", "fwd+bwd"): 8, ("dot", "fwd+bwd"): 8,
                      ("median", "fwd"): 2, ("median", "fwd+bwd"): 2, ("block", "fwd+bwd"): 4}
    assert {c.dtype for c in suite.cases} == {torch.float32, torch.bfloat16}
    big = next(c for c in suite.cases if c.label == "gaussian B32 C256 d128 56x56" and c.mode == "fwd")
    assert dict(big.shapes) == {"theta": (32, 128, 56, 56), "phi": (32, 128, 56, 56), "g": (32, 256, 56, 56)}
    assert big.flops == 2 * 32 * 3136 ** 2 * (128 + 256)
    fwd_bwd = next(c for c in suite.cases if c.label == big.label and c.mode == "fwd+bwd")
    assert fwd_bwd.flops == 3.5 * big.flops


def test_cpu_cases_keep_the_shapes_at_batch_2():
    suite = bench_nlm.build_suite("cpu", [torch.float32])
    gaussian = [c for c in suite.cases if c.kind == "gaussian"]
    assert {dict(c.shapes)["g"] for c in gaussian} == {(2, 256, 32, 32), (2, 256, 56, 56), (2, 512, 16, 16),
                                                       (2, 1024, 28, 28)}
    assert {dict(c.shapes)["x"] for c in suite.cases if c.kind == "median"} == {(8, 256, 32, 32)}


def test_block_cases_take_every_parameter_and_autocast_in_bf16():
    case = next(c for c in bench_nlm.build_suite("cpu", [torch.bfloat16]).cases
                if c.kind == "block" and c.stage == "layer3")
    names = case.input_names
    assert names[0] == "x" and dict(case.shapes)["x"] == (8, 128, 16, 16)
    assert {"1.nlm.theta.weight", "1.nlm.phi.weight", "1.conv.weight", "1.bn.weight", "1.bn.bias",
            "0.0.conv1.weight", "0.0.shortcut.weight"} <= set(names)
    assert set(case.params) == set(names[1:]) and case.differentiated() == names
    assert dict(case.input_dtypes) == {n: torch.float32 for n in names[1:]}


def test_median_inputs_have_no_tie_in_any_window():
    x = bench_nlm.window_distinct_values((2, 3, 7, 6), torch.Generator().manual_seed(0))
    assert torch.equal(x.to(torch.bfloat16).float(), x) and torch.equal(x.half().float(), x)
    windows = torch.nn.functional.unfold(x.reshape(6, 1, 7, 6), 3)  # (6, 9, 5 * 4) interior windows
    ordered = windows.sort(dim=1).values
    assert (ordered[:, 1:] > ordered[:, :-1]).all()


def test_block_reference_is_the_module():
    """The written-out reference of the block case computes what the modules compute."""
    suite = bench_nlm.build_suite("cpu", [torch.float32], quick=True)
    case = next(c for c in suite.cases if c.kind == "block" and c.stage == "layer3")
    inputs = harness.build_inputs(suite, case)
    args = [inputs[n].detach() for n in case.input_names]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*runs its pure-PyTorch reference", category=RuntimeWarning)
        modules = bench_nlm.block_fused(case)(*args)
    reference = bench_nlm.block_reference(case)(*args)
    assert not torch.allclose(reference, bench_nlm.block_modules("layer3")[0][0](args[0]))  # the block acts
    torch.testing.assert_close(modules, reference, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- metrics


def test_cpu_peak_memory_sees_the_step_temporaries():
    def step():
        big = torch.ones(1 << 20)  # 4 MiB, freed before the end
        small = big[:1024].clone()  # 4 KiB, returned
        del big
        return small

    peak = bench_nlm.cpu_peak_bytes(step)
    assert 4 << 20 <= peak < (4 << 20) + (1 << 16)


def test_flop_rates():
    case = bench_nlm.op_case("gaussian", "cpu", torch.float32, "fwd", 1, 4, 2)
    record = {"implementations": {"fused": {"median_s": 0.5}, "sdpa": {"skipped": "why"}}}
    bench_nlm.add_flop_rates(record, case)
    assert record["flops"] == 2 * 16 * (2 + 4)
    assert record["implementations"]["fused"]["tflops"] == pytest.approx(192 / 0.5 / 1e12)
    assert record["implementations"]["sdpa"]["tflops"] is None
    assert bench_nlm.nlm_flops("dot", "fwd+bwd", 1, 4, 2, 4) == 3 * 2 * 16 * 6


def test_suite_plumbing_without_kernels(monkeypatch):
    """One case of each kind through check, timing and the extra metrics with the ops'
    reference fallbacks standing in for the kernels (so that it runs in any build)."""
    monkeypatch.setattr(bench_nlm, "require_op", lambda op: None)
    recorder = bench_nlm.BuildRecorder()
    suite = recorder.wrap(bench_nlm.build_suite("cpu", [torch.float32], quick=True))
    picked = {}
    for case in suite.cases:
        if case.mode == "fwd+bwd" and case.kind not in picked and not (case.kind == "gaussian" and case.label.endswith("32x32")):
            picked[case.kind] = case
    options = harness.Options(quick=True, compile=False, min_run_time=0.001)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*runs its pure-PyTorch reference", category=RuntimeWarning)
        records = {k: bench_nlm.run_nlm_case(suite, recorder, c, options, None) for k, c in picked.items()}
    assert set(records) == set(KINDS)
    for kind, record in records.items():
        assert results.check_summary(record) == "ok", (kind, record)
        assert record["kind"] == kind
        for name in EXPECTED_IMPLEMENTATIONS[kind]:
            entry = record["implementations"][name]
            assert entry["correct"] and entry["median_s"] > 0 and entry["peak_memory_bytes"] > 0, (kind, name)
        assert not recorder.built  # nothing kept alive after the case
    assert records["gaussian"]["implementations"]["sdpa"]["tflops"] > 0
    assert records["median"]["implementations"]["sdpa"]["skipped"]


@pytest.mark.skipif(not HAS_OPS, reason="fastrobust._C has no nlm_gaussian kernel")
def test_gemm_bound_measures_the_three_steps_with_the_suite_timer():
    from benchmarks import nlm_gemm_bound

    r = nlm_gemm_bound.measure(1, 16, 4, torch.float32, rounds=2, min_run_time=0.02)
    assert r["shape"] == [1, 16, 4, 4] and r["d"] == 8 and r["n"] == 16 and r["dtype"] == "fp32"
    for key in ("t_reference_s", "t_fused_s", "t_gemms_s"):
        assert math.isfinite(r[key]) and r[key] > 0
    assert r["measured_reference_over_fused"] == pytest.approx(r["t_reference_s"] / r["t_fused_s"])
    assert r["bound_reference_over_fused"] == pytest.approx(r["t_reference_s"] / r["t_gemms_s"])


def test_cuda_records_name_the_path_the_dispatch_model_takes(monkeypatch):
    """fused_path on an H200 (its properties faked: the machine may have no GPU): the path
    nlm_dispatch.decide takes for each case, SDPA at C256 56x56 bf16 and the materialising
    composition at C1024 28x28 (as measured fastest there)."""
    from types import SimpleNamespace

    from fastrobust.ops import nlm_dispatch

    memory = 143771 * 2**20
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=9, minor=0, total_memory=memory))
    cases = {(c.label, c.mode, c.dtype): c for c in bench_nlm.build_suite("cuda").cases}
    assert bench_nlm.fused_path(cases[("gaussian B32 C256 d128 56x56", "fwd+bwd", torch.bfloat16)]) == "sdpa"
    assert bench_nlm.fused_path(cases[("gaussian B8 C1024 d512 28x28", "fwd+bwd", torch.float32)]) == "materialize"
    for case in cases.values():
        if case.kind in ("gaussian", "block"):
            path = bench_nlm.fused_path(case)
            shapes = dict(case.shapes)
            if case.kind == "gaussian":
                (b, d, h, w), c = shapes["theta"], shapes["g"][1]
                decision = nlm_dispatch.decide("cuda", case.dtype, (9, 0), b, d, c, h * w, case.mode == "fwd+bwd", memory)
                assert path == nlm_dispatch.built_path(decision.path), case.label
