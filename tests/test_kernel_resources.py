"""The CUDA kernels' resources (ptxas, recorded at build time) and their launches on an H100:
no spills, shared memory within what a block may use without the opt-in attribute, and no
launch configuration at the benchmark shapes that an H100 would refuse."""
import subprocess
import sys

import pytest
import torch

import fastrobust
from fastrobust import kernel_cases as kc
from fastrobust import kernel_resources as kr
from fastrobust._ptxas import parse_ptxas

PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN10fastrobust4cuda2k2EPf' for 'sm_90'
ptxas info    : Function properties for _ZN10fastrobust4cuda2k2EPf
    160 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 160 bytes cumulative stack size
ptxas info    : Compile time = 9.338 ms
ptxas info    : Function properties for _ZN10fastrobust4cuda6helperEfPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_ZN10fastrobust4cuda4kernIfLNS0_1GE1EEEvPT_i' for 'sm_90'
ptxas info    : Function properties for _ZN10fastrobust4cuda4kernIfLNS0_1GE1EEEvPT_i
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
"""

needs_emu = pytest.mark.skipif(not fastrobust.HAS_EMU, reason="needs the CUDA emulator build (FR_EMULATE_CUDA=1)")


def test_parse_ptxas_report():
    usage = parse_ptxas(PTXAS_SAMPLE)
    assert usage["_ZN10fastrobust4cuda2k2EPf"] == dict(kernel=True, arch="sm_90", registers=32, barriers=0,
                                                       static_smem=0, stack_frame=160, spill_stores=8,
                                                       spill_loads=4)
    assert usage["_ZN10fastrobust4cuda6helperEfPf"] == dict(kernel=False, stack_frame=0, spill_stores=0,
                                                            spill_loads=0)
    kern = usage["_ZN10fastrobust4cuda4kernIfLNS0_1GE1EEEvPT_i"]
    assert (kern["registers"], kern["barriers"], kern["static_smem"]) == (10, 1, 1024)


def test_demangled_names_are_shortened():
    assert kr._shorten("void fastrobust::cuda::nlm::grad_kernel<c10::Half, (fastrobust::cuda::nlm::Grad)1>"
                       "(fastrobust::nlm::Ptrs<c10::Half, float>)") == "nlm::grad_kernel<Half, Grad(1)>"
    # The nvcc kernel and its emulated twin (other parameter types, other namespace) share a name.
    cuda = "_ZN10fastrobust4cuda6sparta21sparta_forward_kernelIfLi3EEEvPKT_S5_S5_PS3_lliiiiii"
    emu = "_ZN10fastrobust3emu6sparta21sparta_forward_kernelIfLi3EEEvN6fr_emu9GlobalPtrIKT_EES7_S7_NS4_IS5_EElliiiiii"
    assert kr.kernel_name(cuda) == kr.kernel_name(emu) == "sparta::sparta_forward_kernel<float, 3>"
    assert kr.demangle("not_a_cxx_symbol") == "not_a_cxx_symbol"


def launch(threads=256, grid=(100, 1, 1), smem=0):
    return kr.Launch("op", "k", grid, (threads, 1, 1), smem)


def test_occupancy_model():
    # 48 registers x 32 lanes = 1536 per warp: 65536 / 1536 = 42 warps, 5 blocks of 8 warps.
    occ = kr.occupancy(launch(256), {"registers": 48, "static_smem": 0})
    assert (occ["blocks_per_sm"], occ["limited_by"]) == (5, "registers")
    assert occ["occupancy"] == pytest.approx(40 / 64)
    # 33 registers are allocated as 40 (per warp: 1056 -> 1280): 51 warps, 6 blocks.
    assert kr.occupancy(launch(256), {"registers": 33, "static_smem": 0})["blocks_per_sm"] == 6
    # Few registers: 2048 threads per SM allow 8 blocks of 256.
    occ = kr.occupancy(launch(256, grid=(132 * 8 * 3, 1, 1)), {"registers": 16, "static_smem": 0})
    assert (occ["blocks_per_sm"], occ["limited_by"], occ["waves"]) == (8, "warps", 3.0)
    # Shared memory: 40 KiB + the 1 KiB the system keeps per block: 228 KiB hold 5.
    occ = kr.occupancy(launch(128, smem=30 * 1024), {"registers": 16, "static_smem": 10 * 1024})
    assert (occ["blocks_per_sm"], occ["limited_by"]) == (5, "shared memory")
    # 32 threads per block: the limit of 32 resident blocks per SM.
    assert kr.occupancy(launch(32), {"registers": 16, "static_smem": 0})["limited_by"] == "blocks"


def test_refusals_name_what_the_gpu_refuses():
    ok = {"registers": 64, "static_smem": 16 * 1024}
    assert kr.refusals(launch(1024), ok) == []
    assert any("1025 threads" in p for p in kr.refusals(launch(1025), ok))
    assert any("shared memory" in p and "cudaFuncAttributeMaxDynamicSharedMemorySize" in p
               for p in kr.refusals(launch(smem=32 * 1024 + 1), ok))
    assert kr.refusals(launch(smem=32 * 1024), ok) == []
    assert kr.refusals(launch(smem=100 * 1024), ok, opted_in=True) == []
    opted = kr.Launch("op", "k", (100, 1, 1), (256, 1, 1), 100 * 1024, smem_opt_in=100 * 1024)
    assert kr.refusals(opted, ok) == []  # the opt-in the launch log records
    over = kr.Launch("op", "k", (100, 1, 1), (256, 1, 1), 100 * 1024, smem_opt_in=64 * 1024)
    assert any("the 65536 of its cudaFuncAttributeMaxDynamicSharedMemorySize" in p for p in kr.refusals(over, ok))
    assert any("registers per block" in p for p in kr.refusals(launch(1024), {"registers": 72, "static_smem": 0}))
    assert any("grid" in p for p in kr.refusals(launch(grid=(1, 65536, 1)), ok))


def build_resources_or_skip():
    resources = kr.build_resources()
    if fastrobust.HAS_EXT and fastrobust._C.with_cuda:
        # A CUDA build must carry the report (setup.py compiles through the ptxas wrapper).
        assert resources, "the CUDA build's info has no kernel_resources (csrc/tools/nvcc_resource_usage.py)"
        return resources
    pytest.skip("the CUDA sources were not compiled in this build")


def test_no_kernel_spills_or_exceeds_static_shared_memory():
    resources = build_resources_or_skip()
    kernels = {s: u for s, u in resources.items() if u.get("kernel")}
    assert len(kernels) >= 100  # every dtype instantiation of every op's kernels
    spills = {s: (u["spill_stores"], u["spill_loads"]) for s, u in resources.items()
              if u.get("spill_stores") or u.get("spill_loads")}
    assert not spills, f"register spills: {spills}"
    big = {s: u["static_smem"] for s, u in kernels.items() if u["static_smem"] > kr.H100.shared_per_block_default}
    assert not big, f"static shared memory above 48 KiB: {big}"
    assert all(u["arch"] == "sm_90" for u in kernels.values())


@needs_emu
def test_benchmark_launches_run_on_an_h100():
    usage_of = kr.kernel_usage()
    launches = kr.benchmark_launches()
    ops = {launch.op.split()[0] for launch in launches}
    assert ops == {"sparta", "nlm_gaussian", "median3x3", "cifs_reweight", "pgd_step_", "apgd_step_",
                   "pgd_random_init_", "pgd_update_best_", "margin_loss"}
    problems = {}
    for launch in launches:
        usage = usage_of.get(launch.name)
        if usage_of:
            assert usage is not None, f"{launch.op}: kernel {launch.name} not in the ptxas report"
        found = kr.refusals(launch, usage)
        if found:
            problems[f"{launch.op}: {launch.name}"] = found
    assert not problems, problems


@needs_emu
def test_dry_run_records_the_launches_an_executed_run_makes():
    x = torch.randn(2, 8, 12, 12)
    w = 0.1 * torch.randn(8, 1, 3, 3)
    b = torch.zeros(8)
    emu = torch.ops.fastrobust_emu
    dry = kr.record_launches(lambda: emu._sparta_backward(x, x, w, b))
    fastrobust._C._emu_start_launch_log(True, 0)
    try:
        emu._sparta_backward(x, x, w, b)
    finally:
        executed = fastrobust._C._emu_stop_launch_log()
    assert dry == executed and len(dry) == 2  # the tile kernel and the partial-sum reduction
    assert all(symbol.startswith(kr.EMULATED_PREFIX) for symbol, *_ in dry)


@needs_emu
def test_a_dry_run_still_refuses_what_the_gpu_refuses():
    # The launch checks run before a dry run skips the kernel (std::invalid_argument -> ValueError).
    block_sum = torch.ops.fastrobust_emu._selftest_block_sum
    with pytest.raises(ValueError, match=r"1025 threads \(1..1024 allowed\)"):
        kr.record_launches(lambda: block_sum(torch.ones(10), 1025, 10, True))
    assert kr.record_launches(lambda: block_sum(torch.ones(10), 64, 10, True))[0][2] == (64, 1, 1)


def test_launch_shapes_are_the_benchmark_shapes():
    from fastrobust.bench import cifs as bench_cifs, nlm as bench_nlm, pgd as bench_pgd, sparta as bench_sparta

    assert kc.SPARTA_STAGES == bench_sparta.RESNET18_CIFAR_STAGES
    assert (kc.SPARTA_BATCH, kc.SPARTA_K) == (bench_sparta.BATCH["cuda"], bench_sparta.KERNEL_SIZE)
    assert kc.NLM_GAUSSIAN_SHAPES == bench_nlm.GAUSSIAN_SHAPES
    assert kc.MEDIAN_SHAPES == bench_nlm.MEDIAN_SHAPES["cuda"]
    cifs = {(batch, c, hw) for (c, hw, _), batches in bench_cifs.BATCHES["cuda"].items() for batch in batches}
    assert set(kc.CIFS_SHAPES) == cifs
    assert (kc.PGD_ROWS, kc.PGD_IMAGE) == (bench_pgd.SIZES["cuda"].step_rows, bench_pgd.IMAGE_SHAPE)


@needs_emu
def test_info_kernels_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "fastrobust.info", "--kernels"], check=True, capture_output=True,
                         text=True).stdout
    assert "launches at the CUDA benchmark shapes on an H100" in out
    assert "sparta::sparta_forward_kernel<float, 3>  <- sparta float32 (256, 64, 32, 32)" in out
    assert "REFUSED" not in out
    if kr.build_resources():
        assert "compiled kernels" in out and "nlm::forward_mma_kernel<BFloat16, 256>" in out
