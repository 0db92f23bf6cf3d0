"""nlm_gaussian's choice between our kernel and F.scaled_dot_product_attention
(fastrobust.ops.nlm_dispatch): the work model against the emulator's count of the kernel's
launches, the decisions, the SDPA path's values and gradients, and the backend argument."""
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
    """kernel_flops is the model's view of our kernel: it must be what the emulator counted
    over every tensor-core launch of each bf16 case (the committed model JSON)."""
    counted = {}
    for r in model_records():
        if r["op"] == "nlm_gaussian" and r["dtype"] == "bfloat16" and r["kernel"] != "(op)":
            counted[r["case"]] = counted.get(r["case"], 0.0) + r["flops"]
    assert len(counted) == 8  # four shapes, forward and backward
    for case, flops in counted.items():
        assert nlm_dispatch.kernel_flops(*case_problem(case)) == flops, case


def test_kernel_bytes_equal_the_emulators_count_where_it_ran_whole_rows_of_blocks():
    """kernel_bytes against the bytes the emulator counted over the bf16 cases' launches. The
    model runs 32 blocks of a launch and scales up; where a launch has more than 32 blocks
    along its positions (56x56: 49), the blocks it ran read a larger share of the keys than
    the average block, so that case is left out."""
    counted, whole = {}, {}
    for r in model_records():
        if r["op"] == "nlm_gaussian" and r["dtype"] == "bfloat16" and r["kernel"] != "(op)":
            counted[r["case"]] = counted.get(r["case"], 0.0) + r["bytes"]
            if "wmma" in r["kernel"]:
                whole[r["case"]] = whole.get(r["case"], True) and r["grid"][0] <= r["blocks_run"]
    compared = [case for case in counted if whole[case]]
    assert len(compared) == 6
    for case in compared:
        assert nlm_dispatch.kernel_bytes(*case_problem(case), element=2) == counted[case], case


def test_sdpa_flops_are_flash_attention_2s_minimum_when_no_padding_is_needed():
    b, d, n = 2, 64, 100
    assert nlm_dispatch.sdpa_flops(b, d, d, n, False) == 2 * 2 * b * n * n * d
    assert nlm_dispatch.sdpa_flops(b, d, d, n, True) == 5 * 2 * b * n * n * d
    # unequal widths pay for the padding: both run at the wider one, rounded up to 8
    assert nlm_dispatch.sdpa_flops(b, 3, 10, n, False) == 2 * 2 * b * n * n * 16


@pytest.mark.parametrize("case", [(64, 256, 32), (32, 256, 56), (128, 512, 16), (8, 1024, 28)])
@pytest.mark.parametrize("backward", [False, True])
def test_auto_picks_the_path_the_model_finds_cheaper(case, backward):
    b, c, hw = case
    decision = nlm_dispatch.decide("cuda", torch.bfloat16, H100, b, c // 2, c, hw * hw, backward)
    kernel_us = nlm_dispatch.modeled_us("kernel", torch.bfloat16, b, c // 2, c, hw * hw, backward)
    sdpa_us = nlm_dispatch.modeled_us("sdpa", torch.bfloat16, b, c // 2, c, hw * hw, backward)
    assert (decision.kernel_us, decision.sdpa_us) == (kernel_us, sdpa_us)
    assert decision.path == ("sdpa" if sdpa_us < kernel_us else "kernel"), decision


def test_auto_picks_sdpa_where_the_kernel_recomputes_most():
    """C 1024, d 512 at 28x28: our backward recomputes the logits 16 times (8 value slices,
    4 + 4 key slices); SDPA's costs the padding of theta and phi to 1024 and the copies."""
    decision = nlm_dispatch.decide("cuda", torch.bfloat16, H100, 8, 512, 1024, 28 * 28, True)
    assert decision.path == "sdpa" and decision.sdpa_us < 0.6 * decision.kernel_us, decision


def test_auto_keeps_the_kernel_where_sdpas_copies_cost_more():
    """C 512, d 256 at 16x16 (N = 256): little work per byte, and the SDPA path moves every
    input and output once more to pad and transpose it."""
    decision = nlm_dispatch.decide("cuda", torch.bfloat16, H100, 128, 256, 512, 16 * 16, True)
    assert decision.path == "kernel" and decision.kernel_us < decision.sdpa_us, decision


def test_auto_keeps_the_kernel_where_padding_would_cost_sdpa_more():
    """A narrow key width and a wide value (d = 64, C = 1024): padded to 1024, SDPA's logits
    cost 16 times ours; the model keeps the kernel."""
    decision = nlm_dispatch.decide("cuda", torch.float16, H100, 8, 64, 1024, 28 * 28, True)
    assert decision.path == "kernel" and decision.kernel_us < decision.sdpa_us, decision


@pytest.mark.parametrize("device_type, dtype, capability, b, n", [
    ("cpu", torch.bfloat16, None, 8, 1024),
    ("cuda", torch.float32, H100, 8, 1024),
    ("cuda", torch.float64, H100, 8, 1024),
    ("cuda", torch.bfloat16, (7, 5), 8, 1024),
    ("cuda", torch.bfloat16, H100, 0, 1024),
    ("cuda", torch.bfloat16, H100, 8, 0),
])
def test_auto_keeps_the_kernel_where_sdpa_is_no_candidate(device_type, dtype, capability, b, n):
    decision = nlm_dispatch.decide(device_type, dtype, capability, b, 128, 256, n, True)
    assert decision.path == "kernel" and decision.sdpa_us is None, decision


def test_the_model_counts_the_backward_only_when_a_gradient_is_taken():
    args = ("cuda", torch.bfloat16, H100, 8, 128, 256, 1024)
    fwd, both = nlm_dispatch.decide(*args, False), nlm_dispatch.decide(*args, True)
    assert both.kernel_us > fwd.kernel_us and both.sdpa_us > fwd.sdpa_us


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
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'kernel', 'sdpa', got 'flash'"):
        nlm_gaussian(theta, phi, g, backend="flash")
    with pytest.raises(ValueError, match="backend must be one of"):
        nlm_gaussian_path(theta, phi, g, backend="")


def test_path_reports_what_runs_on_the_cpu():
    theta, phi, g = inputs(1, 2, 3, 2, torch.bfloat16, requires_grad=True)
    built = "kernel" if fastrobust.HAS_EXT else "reference"
    assert nlm_gaussian_path(theta, phi, g) == built  # auto: SDPA is chosen on CUDA GPUs only
    assert nlm_gaussian_path(theta, phi, g, backend="kernel") == built
    assert nlm_gaussian_path(theta, phi, g, backend="sdpa") == "sdpa"


@pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")
def test_forced_paths_agree():
    theta, phi, g = inputs(2, 4, 12, 6, torch.float32)
    torch.testing.assert_close(nlm_gaussian(theta, phi, g, backend="sdpa"),
                               nlm_gaussian(theta, phi, g, backend="kernel"))
