"""nlm_gaussian's choice among our kernel, F.scaled_dot_product_attention and the materialising
composition (fastrobust.ops.nlm_dispatch): the work model against the emulator's count of the
kernel's launches, the decisions against the committed H200 measurements, the SDPA path's
values and gradients, and the backend argument."""
import json
from pathlib import Path

import pytest
import torch

import fastrobust
from fastrobust.ops import nlm_dispatch, nlm_gaussian, nlm_gaussian_path
from fastrobust.reference import nlm as reference

MODEL_JSON = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "nlm-h100-model.json"
H100 = (9, 0)


def model_records():
    return json.loads(MODEL_JSON.read_text())["records"]


def case_problem(case: str):
    """(B, d, C, N, backward) of a model case such as 'nlm_gaussian backward bfloat16 (64, 256, 32, 32)'
    (the suite's shapes: d = C / 2)."""
    b, c, h, w = (int(x) for x in case[case.index("(") + 1:case.index(")")].split(","))
    return b, c // 2, c, h * w, " backward " in case


def test_kernel_flops_equal_the_emulators_count_of_the_tensor_core_launches():
    """kernel_flops is the model's view of our kernel: it must be what the emulator counts over
    every tensor-core launch, every block run, of the forward and the backward in bf16 and in
    fp32 as tf32, at shapes that take one or several slices of 64, 128 and 256 (fp32's backward:
    128) columns, the wide kernels' blocks of 512 and slices of 1024, widths that are no multiple
    of the tiles and positions that fill no tile."""
    from fastrobust import cost_model
    from fastrobust.kernel_cases import with_tf32

    if not fastrobust.HAS_EMU:
        pytest.skip("built without FR_EMULATE_CUDA=1")
    emu = torch.ops.fastrobust_emu
    gen = torch.Generator().manual_seed(0)
    for b, d, c, h, w in [(2, 40, 72, 5, 7), (1, 136, 300, 8, 8), (2, 8, 20, 4, 4), (1, 264, 130, 6, 6),
                          (1, 24, 600, 5, 7), (1, 8, 1100, 2, 3), (1, 600, 24, 3, 3)]:
        n = h * w
        for dtype, element, wrap in ((torch.bfloat16, 2, lambda f: f), (torch.float32, 4, with_tf32)):
            theta, phi = (torch.randn(b, d, h, w, generator=gen).to(dtype) for _ in range(2))
            g = torch.randn(b, c, h, w, generator=gen).to(dtype)
            y, lse = wrap(lambda: emu.nlm_gaussian(theta, phi, g, 0.3))()
            gy = torch.randn(y.shape, generator=gen).to(dtype)
            passes = {False: lambda: emu.nlm_gaussian(theta, phi, g, 0.3),
                      True: lambda: emu._nlm_gaussian_backward(gy, theta, phi, g, y, lse, 0.3)}
            for backward, fn in passes.items():
                counted = sum(k.mma_flops for k in cost_model.model(wrap(fn), cost_model.EVERY_BLOCK))
                expected = nlm_dispatch.kernel_flops(b, d, c, n, backward, element)
                assert counted == expected, (b, d, c, n, dtype, backward)


# The tensor-core kernels of nlm_gaussian (csrc/cuda/nlm_mma_forward*.cuh, nlm_mma_backward*.cuh).
TENSOR_CORE_KERNELS = ("forward_mma_kernel", "forward_wide_kernel", "backward_mma_kernel", "backward_wide_kernel",
                       "fused_key_gradients_kernel")


def test_kernel_flops_and_bytes_equal_the_committed_models_records():
    """kernel_flops and kernel_bytes against the committed model's records of the tensor-core
    kernels (bf16, and fp32 as tf32), forward and backward: the FLOPs of every case; the bytes
    of the cases whose launches ran whole rows of blocks (the model runs 32 blocks of a launch
    and scales up; at 56x56, 49 blocks a row, the blocks it ran read a larger share of the keys
    than the average block)."""
    flops, nbytes, whole, element = {}, {}, {}, {}
    for r in model_records():
        if r["op"] != "nlm_gaussian" or not (r["dtype"] == "bfloat16" or " tf32 " in r["case"]):
            continue
        case = r["case"]
        element[case] = 2 if r["dtype"] == "bfloat16" else 4
        if any(name in r["kernel"] for name in TENSOR_CORE_KERNELS):
            flops[case] = flops.get(case, 0.0) + r["flops"]
            whole[case] = whole.get(case, True) and r["grid"][0] <= r["blocks_run"]
        if r["kernel"] != "(op)":
            nbytes[case] = nbytes.get(case, 0.0) + r["bytes"]
    assert len(flops) == 16  # four shapes, forward and backward, bf16 and tf32
    for case, counted in flops.items():
        assert nlm_dispatch.kernel_flops(*case_problem(case), element=element[case]) == counted, case
    compared = [case for case in nbytes if whole[case]]
    assert len(compared) == 12
    for case in compared:
        assert nlm_dispatch.kernel_bytes(*case_problem(case), element=element[case]) == nbytes[case], case


def test_sdpa_flops_are_flash_attention_2s_minimum_when_no_padding_is_needed():
    b, d, n = 2, 64, 100
    assert nlm_dispatch.sdpa_flops(b, d, d, n, False) == 2 * 2 * b * n * n * d
    assert nlm_dispatch.sdpa_flops(b, d, d, n, True) == 5 * 2 * b * n * n * d
    # unequal widths pay for the padding: both run at the wider one, rounded up to 8
    assert nlm_dispatch.sdpa_flops(b, 3, 10, n, False) == 2 * 2 * b * n * n * 16


H200_MEMORY = 143771 * 2**20
GPU_JSON = MODEL_JSON.parent / "nlm-cuda.json"
BENCH_SHAPES = [(64, 256, 32), (32, 256, 56), (128, 512, 16), (8, 1024, 28)]


@pytest.mark.parametrize("case", BENCH_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backward", [False, True])
def test_auto_picks_the_least_expected_time(case, dtype, backward):
    b, c, hw = case
    decision = nlm_dispatch.decide("cuda", dtype, H100, b, c // 2, c, hw * hw, backward, H200_MEMORY)
    paths = nlm_dispatch.candidates(dtype, H100, b, c // 2, c, hw * hw, H200_MEMORY)
    assert set(decision.expected_us) == set(paths) and "kernel" in paths
    for path in paths:
        assert decision.expected_us[path] == nlm_dispatch.expected_us(path, dtype, b, c // 2, c, hw * hw, backward)
    assert decision.path == min(decision.expected_us, key=decision.expected_us.get), decision


def gpu_gaussian_cases():
    """(b, c, hw, dtype, backward, {path: measured seconds}) of the committed H200 run."""
    cases = []
    for case in json.loads(GPU_JSON.read_text())["cases"]:
        name = case["case"].split()
        if name[0] != "gaussian":
            continue
        impls = case["implementations"]
        measured = {"materialize": impls["reference"]["median_s"], "sdpa": impls["sdpa"]["median_s"]}
        kernel = impls.get("kernel", impls["fused"] if case["path"] == "kernel" else {})
        if kernel.get("median_s"):
            measured["kernel"] = kernel["median_s"]
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name[5]]
        cases.append((int(name[1][1:]), int(name[2][1:]), int(name[4].split("x")[0]), dtype, name[6] == "fwd+bwd",
                      measured))
    return cases


@pytest.mark.skipif(not GPU_JSON.exists(), reason="no committed GPU results")
def test_auto_runs_the_path_measured_fastest_on_the_h200():
    """At every gaussian case of the committed H200 run, auto's path is the fastest measured
    among its candidates (the efficiencies were fitted to this run: a check that the model
    and its constants reproduce it, not a prediction for other shapes)."""
    cases = gpu_gaussian_cases()
    assert len(cases) == 16
    for b, c, hw, dtype, backward, measured in cases:
        decision = nlm_dispatch.decide("cuda", dtype, H100, b, c // 2, c, hw * hw, backward, H200_MEMORY)
        timed = {p: t for p, t in measured.items() if p in decision.expected_us}
        assert decision.path in timed, (b, c, hw, dtype, backward, decision)
        assert timed[decision.path] <= 1.05 * min(timed.values()), (b, c, hw, dtype, backward, decision, timed)


def test_sdpa_is_no_candidate_past_a_padded_width_of_512():
    """C 1024, d 512: padded to 1024, SDPA reached 3-12 % of its roofline on the H200."""
    assert "sdpa" not in nlm_dispatch.candidates(torch.bfloat16, H100, 8, 512, 1024, 28 * 28, H200_MEMORY)
    assert "sdpa" in nlm_dispatch.candidates(torch.bfloat16, H100, 8, 256, 512, 28 * 28, H200_MEMORY)


def test_materialize_only_while_the_logits_fit():
    b, n = 32, 56 * 56  # 1.26 GB of float32 logits
    assert "materialize" in nlm_dispatch.candidates(torch.float32, H100, b, 128, 256, n, H200_MEMORY)
    assert "materialize" not in nlm_dispatch.candidates(torch.float32, H100, b, 128, 256, n, 16 * 2**30)
    assert "materialize" not in nlm_dispatch.candidates(torch.float32, H100, b, 128, 256, n)  # memory unknown: 1 GiB
    assert "materialize" not in nlm_dispatch.candidates(torch.float64, H100, 1, 128, 256, 64, H200_MEMORY)


@pytest.mark.parametrize("device_type, dtype, capability, b, n", [
    ("cpu", torch.bfloat16, None, 8, 1024),
    ("cpu", torch.float32, None, 8, 1024),
    ("cuda", torch.float64, H100, 8, 1024),
    ("cuda", torch.bfloat16, H100, 0, 1024),
    ("cuda", torch.bfloat16, H100, 8, 0),
])
def test_the_kernel_runs_where_there_is_nothing_to_choose(device_type, dtype, capability, b, n):
    decision = nlm_dispatch.decide(device_type, dtype, capability, b, 128, 256, n, True, H200_MEMORY)
    assert decision.path == "kernel" and decision.expected_us == {}, decision


def test_sdpa_needs_compute_capability_8():
    decision = nlm_dispatch.decide("cuda", torch.bfloat16, (7, 5), 64, 128, 256, 1024, True, H200_MEMORY)
    assert set(decision.expected_us) == {"kernel", "materialize"}, decision


def test_the_model_counts_the_backward_only_when_a_gradient_is_taken():
    args = ("cuda", torch.bfloat16, H100, 8, 128, 256, 1024)
    fwd, both = nlm_dispatch.decide(*args, False, H200_MEMORY), nlm_dispatch.decide(*args, True, H200_MEMORY)
    assert set(fwd.expected_us) == set(both.expected_us) == {"kernel", "sdpa", "materialize"}
    for path in fwd.expected_us:
        assert both.expected_us[path] > fwd.expected_us[path]


def test_materialize_work_model():
    b, d, c, n = 2, 3, 5, 7
    assert nlm_dispatch.materialize_flops(b, d, c, n, False) == 2 * b * n * n * (d + c)
    assert nlm_dispatch.materialize_flops(b, d, c, n, True) == 2 * nlm_dispatch.materialize_flops(b, d, c, n, False)
    io, plane = (2 * b * d * n + 2 * b * c * n) * 2, b * n * n * 2
    assert nlm_dispatch.materialize_bytes(b, d, c, n, False, 2) == io + 4 * plane
    assert nlm_dispatch.materialize_bytes(b, d, c, n, True, 2) == 2 * io + 7 * plane


def inputs(b, d, c, hw, dtype, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    theta, phi = (torch.randn(b, d, hw, hw, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
    g = torch.randn(b, c, hw, hw, generator=gen, dtype=torch.float64).to(dtype)
    return [t.requires_grad_(requires_grad) for t in (theta, phi, g)]


@pytest.mark.parametrize("d, c", [(3, 7), (9, 7), (8, 8), (0, 5), (16, 40)])
def test_sdpa_path_matches_the_materialised_reference(d, c):
    """Values and the three gradients of backend="sdpa" (padding, the (B, 1, N, D) copies and
    back) against the float64 materialised reference."""
    theta, phi, g = inputs(2, d, c, 5, torch.float64, requires_grad=True)
    y = nlm_gaussian(theta, phi, g, 0.7, backend="sdpa")
    want = reference.nlm_gaussian(theta, phi, g, 0.7)
    assert y.shape == g.shape and y.is_contiguous()
    torch.testing.assert_close(y, want)
    dy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, (theta, phi, g), dy),
                               torch.autograd.grad(want, (theta, phi, g), dy))


def test_sdpa_path_takes_any_layout():
    theta, phi, g = inputs(2, 6, 10, 4, torch.float32)
    views = theta.transpose(2, 3), phi[:, :, :, :], g.transpose(2, 3)
    torch.testing.assert_close(nlm_gaussian(*views, backend="sdpa"), reference.nlm_gaussian(*views))


def test_sdpa_path_gradcheck():
    theta, phi, g = inputs(1, 3, 5, 3, torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: nlm_gaussian(*t, backend="sdpa"), (theta, phi, g))


def test_backend_is_checked_by_name():
    theta, phi, g = inputs(1, 2, 3, 2, torch.float32)
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'kernel', 'sdpa', 'materialize', got 'flash'"):
        nlm_gaussian(theta, phi, g, backend="flash")
    with pytest.raises(ValueError, match="backend must be one of"):
        nlm_gaussian_path(theta, phi, g, backend="")


def test_path_reports_what_runs_on_the_cpu():
    theta, phi, g = inputs(1, 2, 3, 2, torch.bfloat16, requires_grad=True)
    built = "kernel" if fastrobust.HAS_EXT else "reference"
    assert nlm_gaussian_path(theta, phi, g) == built  # auto: the other paths are weighed on CUDA GPUs only
    assert nlm_gaussian_path(theta, phi, g, backend="kernel") == built
    assert nlm_gaussian_path(theta, phi, g, backend="sdpa") == "sdpa"
    assert nlm_gaussian_path(theta, phi, g, backend="materialize") == "materialize"


@pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")
def test_forced_paths_agree():
    theta, phi, g = inputs(2, 4, 12, 6, torch.float32)
    torch.testing.assert_close(nlm_gaussian(theta, phi, g, backend="sdpa"),
                               nlm_gaussian(theta, phi, g, backend="kernel"))
    torch.testing.assert_close(nlm_gaussian(theta, phi, g, backend="materialize"),
                               nlm_gaussian(theta, phi, g, backend="kernel"))
