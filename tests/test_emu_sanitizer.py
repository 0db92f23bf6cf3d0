"""The emulator's sanitizer, proved by mutation: each deliberately broken kernel of
csrc/emu/sanitizer_selftest.cpp is reported with a message naming its defect, and its correct
twin runs clean and computes the right result. The checks run on every emulated launch (the
CUDA kernels' tests therefore run under them too)."""
import os
import subprocess
import sys

import pytest
import torch

import fastrobust

pytestmark = pytest.mark.skipif(not fastrobust.HAS_EMU, reason="built without FR_EMULATE_CUDA=1")


def case(name, broken):
    return torch.ops.fastrobust_emu._sanitizer_case(name, broken)


EXPECTED = {
    "missing_barrier": torch.arange(1, 65).remainder(64).float(),
    "uninitialized_read": 2 * torch.arange(64).float(),
    "shared_out_of_bounds": torch.cat([torch.zeros(1), torch.arange(1, 64).float()]),
    "divergent_barrier": torch.arange(63, -1, -1).float(),
    "partial_warp_full_mask": torch.arange(16).float() + (torch.arange(16) ^ 1).float(),
    "divergent_shuffle": torch.arange(32).float() + (torch.arange(32) ^ 1).float(),
    "shared_over_48k": torch.tensor([3.0] * 16 + [1.0] * 48),
    "mma_partial_warp": torch.full((32,), 16.0),
    "cp_async_no_wait": 4 * torch.arange(32).float(),
    "cp_async_unwaited": torch.ones(32),
}

DEFECTS = {
    "missing_barrier": r"emulated racecheck: (read-after-write|write-after-read) race .* kernel neighbour_kernel<true>.*"
                       r"shared array 's' element \d+ .*threads \d+ and \d+",
    "uninitialized_read": r"emulated initcheck: read of shared memory no thread of the block has written .*"
                          r"uninitialized_kernel<true>.*shared array 's'",
    "shared_out_of_bounds": r"emulated memcheck: shared memory access out of bounds .* element 64 \(of 64\)",
    "divergent_barrier": r"emulated synccheck: .* met at a barrier from different __syncthreads\(\) calls .*"
                         r"divergent code",
    "partial_warp_full_mask": r"emulated synccheck: __shfl_xor_sync .* mask 0xffffffff while the lanes of warp 0 "
                              r"that call it are 0x0000ffff",
    "divergent_shuffle": r"emulated synccheck: lanes \d+ and \d+ of warp 0 of kernel divergent_shuffle_kernel<true> "
                         r"met at different warp-wide operations",
    # (the check sees the missing lanes either as not live or, where they have not yet left, as
    # lanes at another call)
    "wmma_partial_warp": r"emulated synccheck: .*(needs all 32 lanes|call different warp matrix operations)",
    "mma_partial_warp": r"emulated synccheck: .*mma_partial_kernel<true>.*(needs all 32 lanes|call different warp "
                        r"matrix operations together \(mma.sync.m16n8k16)",
    "cp_async_no_wait": r"emulated initcheck: read of shared memory no thread of the block has written .*"
                        r"cp_async_kernel<true>",
    "cp_async_unwaited": r"emulated cp.async: a thread of kernel cp_async_unwaited_kernel<true> left its block "
                         r"with copies it never waited for",
    "shared_over_48k": r"emulated launch: kernel big_shared_kernel uses 40960 bytes of static and 10240 bytes of "
                       r"dynamic shared memory, over the 48 KiB",
}


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_broken_kernel_is_reported(name):
    with pytest.raises(RuntimeError, match=DEFECTS[name]):
        case(name, True)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_correct_twin_runs_clean(name):
    torch.testing.assert_close(case(name, False), EXPECTED[name], rtol=0, atol=0)


def test_wmma_full_warp_twin_runs_clean():
    out = case("wmma_partial_warp", False)
    assert out.tolist() == [float(i) for i in range(32)]  # the tile's first row and a half


def fragment_product(broken, seed, monkeypatch):
    monkeypatch.setenv("FASTROBUST_EMU_SEED", str(seed))
    return case("fragment_mapping", broken)


def test_fragment_mapping_dependence_shows(monkeypatch):
    """The accumulator mapping is permuted per launch from the seed: code that writes a fragment
    out element by element under an assumed mapping gives another tile for every mapping, and
    store_matrix_sync gives A B under all of them."""
    a = (torch.arange(256).remainder(7) - 3).float().view(16, 16)
    b = (torch.arange(256).remainder(5) - 2).float().view(16, 16)
    expected = a @ b
    for seed in (1, 2, 3):
        torch.testing.assert_close(fragment_product(False, seed, monkeypatch), expected, rtol=0, atol=0)
    broken = [fragment_product(True, seed, monkeypatch) for seed in (1, 2)]
    assert not torch.equal(broken[0], expected) and not torch.equal(broken[0], broken[1])
    # with seed 0 (no permutation) the broken code happens to be right: the check needs the seed
    torch.testing.assert_close(fragment_product(True, 0, monkeypatch), expected, rtol=0, atol=0)


def test_checks_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("FASTROBUST_EMU_CHECKS", "0")
    out = case("uninitialized_read", True)  # poisoned storage comes back: a signalling NaN
    assert torch.isnan(out).all()


def test_block_order_varies_with_the_seed(monkeypatch):
    """Blocks run in a permuted order under a seed (seed 0: grid order), the same for the same seed:
    a kernel that depends on the order of its blocks (float atomics, for one) shows it."""
    orders = {}
    for seed in ("1", "2", "1"):
        monkeypatch.setenv("FASTROBUST_EMU_SEED", seed)
        orders.setdefault(seed, []).append(torch.ops.fastrobust_emu._selftest_block_order(64).tolist())
    assert orders["1"][0] == orders["1"][1]
    assert orders["1"][0] != orders["2"][0]
    assert sorted(orders["1"][0]) == list(range(64))
    monkeypatch.setenv("FASTROBUST_EMU_SEED", "0")
    assert torch.ops.fastrobust_emu._selftest_block_order(64).tolist() == list(range(64))


@pytest.mark.skipif(os.environ.get("FASTROBUST_ASAN") != "1",
                    reason="needs the AddressSanitizer build (the CI's ASan step sets FASTROBUST_ASAN=1)")
def test_global_out_of_bounds_write_is_caught_by_asan():
    torch.testing.assert_close(case("global_out_of_bounds", False), torch.arange(64).float(), rtol=0, atol=0)
    script = "import torch, fastrobust\ntorch.ops.fastrobust_emu._sanitizer_case('global_out_of_bounds', True)\n"
    # The child imports the same build as this process (-P: not the checkout's in-place one).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastrobust.__file__)))
    env = dict(os.environ, PYTHONPATH=package_root)
    done = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    assert "heap-buffer-overflow" in done.stderr and "WRITE of size 4" in done.stderr, done.stderr[-3000:]
