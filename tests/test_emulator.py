"""The CUDA emulator's own machinery, checked with a reduction kernel that uses shared
memory (static and dynamic), barriers, warp shuffles, ballots and atomics over several
blocks, including block sizes that are not a multiple of the warp size; and its warp matrix
(wmma) operations against CUDA's documented layouts."""
import pytest
import torch

import fastrobust

pytestmark = pytest.mark.skipif(not fastrobust.HAS_EMU, reason="built without FR_EMULATE_CUDA=1")


def block_sum(x, block, chunk, use_shuffles):
    return torch.ops.fastrobust_emu._selftest_block_sum(x, block, chunk, use_shuffles)


@pytest.mark.parametrize("use_shuffles", [True, False], ids=["shuffles", "shared-tree"])
@pytest.mark.parametrize("block", [1, 32, 33, 96, 100, 256])
@pytest.mark.parametrize("n,chunk", [(1, 1), (1000, 1000), (1000, 300), (4097, 512)])
def test_block_reduction(use_shuffles, block, n, chunk):
    # Integers in float: every partial sum is exact, so any lost or doubled value shows.
    x = torch.randint(-50, 50, (n,)).float()
    sums, total, positives = block_sum(x, block, chunk, use_shuffles)
    expected = torch.stack([c.sum() for c in x.split(chunk)])
    torch.testing.assert_close(sums, expected, rtol=0, atol=0)
    assert total.item() == x.sum().item()  # one atomicAdd per block
    assert positives.item() == int((x > 0).sum())  # ballots, popc and integer atomics


def test_launch_limits_are_enforced():
    x = torch.ones(10)
    # The emulator refuses what the GPU would refuse (std::invalid_argument -> ValueError).
    with pytest.raises(ValueError, match=r"1025 threads \(1..1024 allowed\)"):
        block_sum(x, 1025, 10, True)


def dynamic_smem(nbytes, opt_in=-1):
    return torch.ops.fastrobust_emu._selftest_dynamic_smem(nbytes, opt_in)


def test_dynamic_smem_opt_in_lets_a_block_use_more_than_48_kib():
    # Every float of a 160 KiB dynamic allocation written and read back (reversed).
    for nbytes in (48 * 1024, 160 * 1024):
        out = dynamic_smem(nbytes, opt_in=160 * 1024)
        assert torch.equal(out, torch.arange(nbytes // 4 - 1, -1, -1, dtype=torch.float32))
    assert torch.equal(dynamic_smem(48 * 1024), torch.arange(12 * 1024 - 1, -1, -1, dtype=torch.float32))


def test_dynamic_smem_launch_limits_follow_the_opt_in():
    # Without the attribute a block gets 48 KiB; with it, what it was set to, at most 227 KiB.
    with pytest.raises(ValueError, match="48 KiB allowed without opting in"):
        dynamic_smem(48 * 1024 + 4)
    with pytest.raises(ValueError, match="its cudaFuncAttributeMaxDynamicSharedMemorySize is 65536 bytes"):
        dynamic_smem(64 * 1024 + 4, opt_in=64 * 1024)
    with pytest.raises(ValueError, match=r"asks for 232452 bytes .*at most 232448"):
        dynamic_smem(1024, opt_in=227 * 1024 + 4)
    with pytest.raises(ValueError, match="48 KiB allowed without opting in"):  # the other kernel is as it was
        dynamic_smem(64 * 1024)


def test_rejects_bad_arguments():
    with pytest.raises(RuntimeError, match="x must be a 1-D tensor"):
        block_sum(torch.ones(2, 2), 32, 4, True)
    with pytest.raises(RuntimeError, match="chunk must be positive"):
        block_sum(torch.ones(4), 32, 0, True)


@pytest.mark.parametrize("a_col", [False, True], ids=["A-row", "A-col"])
@pytest.mark.parametrize("b_col", [False, True], ids=["B-row", "B-col"])
@pytest.mark.parametrize("c_col", [False, True], ids=["C-row", "C-col"])
def test_wmma_product_follows_cuda_layouts(a_col, b_col, c_col):
    # small integers: bf16 holds them and every float sum is exact
    a = torch.randint(-4, 5, (16, 16)).bfloat16()
    b = torch.randint(-4, 5, (16, 16)).bfloat16()
    c = torch.ops.fastrobust_emu._selftest_wmma(a, b, a_col, b_col, c_col, 16)
    # row_major: entry (r, k) at p[r * ldm + k]; col_major: at p[k * ldm + r]
    A = (a.t() if a_col else a).float()
    B = (b.t() if b_col else b).float()
    expected = A @ B + 1
    torch.testing.assert_close(c.t() if c_col else c, expected, rtol=0, atol=0)


def to_tf32(x):
    """x rounded to tf32 (10-bit mantissas) as __float_to_tf32 does: to nearest, ties away from zero."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("a_col", [False, True], ids=["A-row", "A-col"])
@pytest.mark.parametrize("b_col", [False, True], ids=["B-row", "B-col"])
@pytest.mark.parametrize("c_col", [False, True], ids=["C-row", "C-col"])
def test_wmma_tf32_product_follows_cuda_layouts(a_col, b_col, c_col):
    """fp32 tiles as tf32, m16n16k8: A is 16 x 8 and B 8 x 16, read from the first rows or
    columns of 16-wide buffers."""
    gen = torch.Generator().manual_seed(0)
    # quarters in [-4, 4]: tf32 values whose products and sums are exact in float
    a = torch.randint(-16, 17, (16 * 16,), generator=gen).float() / 4
    b = torch.randint(-16, 17, (16 * 16,), generator=gen).float() / 4
    c = torch.ops.fastrobust_emu._selftest_wmma(a, b, a_col, b_col, c_col, 16)
    # row_major A: entry (r, k) at p[r * 16 + k]; col_major: at p[k * 16 + r] (k < 8)
    A = a.view(16, 16)[:8].t() if a_col else a.view(16, 16)[:, :8]
    B = b.view(16, 16)[:, :8].t() if b_col else b.view(16, 16)[:8]
    torch.testing.assert_close(c.t() if c_col else c, A @ B + 1, rtol=0, atol=0)


def test_wmma_tf32_operands_are_rounded_to_nearest_ties_away():
    """load_operand rounds each fp32 element to tf32: A's first column times a row of ones gives
    each rounded value (+ 1) back."""
    values = torch.tensor([1 + 2**-12, 1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 3.0, 1e-30, -0.0, 2**-10,
                           1 + 2**-10, 100.0 + 2**-7, -7.5, 0.1, 1 / 3, 2.0**100, -(2.0**-100), 0.0])
    a = torch.zeros(16, 16)
    a[:, 0] = values
    b = torch.zeros(16, 16)
    b[0] = 1
    c = torch.ops.fastrobust_emu._selftest_wmma(a.flatten(), b.flatten(), False, False, False, 16)
    rounded = to_tf32(values)
    # ties (2^-11 past 1) go away from zero; below half a tf32 ulp (2^-12) goes down
    assert rounded[:4].tolist() == [1.0, 1 + 2**-10, 1 + 2**-9, -(1 + 2**-10)]
    assert torch.equal(c[:, 3], rounded + 1) and torch.equal(c[:, 0], rounded + 1)


def test_wmma_rejects_tf32_operands_not_converted():
    """The hardware's tf32 product is undefined on floats not converted to tf32: the emulator
    refuses an operand with any of its 13 low mantissa bits set, and takes tf32 values as they are."""
    a = torch.full((16 * 16,), 1 / 3)
    ones = torch.ones(16 * 16)
    with pytest.raises(RuntimeError, match="tf32 operand was not converted with __float_to_tf32"):
        torch.ops.fastrobust_emu._selftest_wmma(a, ones, False, False, False, 16, round_tf32=False)
    exact = torch.ops.fastrobust_emu._selftest_wmma(to_tf32(a), ones, False, False, False, 16, round_tf32=False)
    assert torch.equal(exact, torch.full((16, 16), 8 * to_tf32(torch.tensor(1 / 3)).item() + 1))


def test_wmma_rejects_what_the_hardware_leaves_undefined():
    a = torch.ones(16, 16).bfloat16()
    misaligned = torch.ones(16 * 16 + 1).bfloat16()[1:]  # 2 bytes past a 32-byte boundary
    with pytest.raises(RuntimeError, match="not aligned to 32 bytes"):
        torch.ops.fastrobust_emu._selftest_wmma(misaligned, a, False, False, False, 16)
    padded = torch.ones(16 * 20).bfloat16()
    with pytest.raises(RuntimeError, match="ldm 4 is not a multiple of 16 bytes"):
        torch.ops.fastrobust_emu._selftest_wmma(padded, padded, False, False, False, 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_mma_m16n8k16_follows_the_ptx_register_layout(dtype):
    """mma.sync m16n8k16: the test kernel loads each lane's registers of A (16 x 16), B (16 x 8)
    and C (16 x 8) as the PTX ISA lays them out and stores D the same way; D = A B + C exactly
    (small integers and halves: every product and sum is exact in float)."""
    gen = torch.Generator().manual_seed(1)
    a = (torch.randint(-8, 9, (16, 16), generator=gen) / 2).to(dtype)
    b = (torch.randint(-8, 9, (16, 8), generator=gen) / 2).to(dtype)
    c = torch.randint(-20, 21, (16, 8), generator=gen).float()
    d = torch.ops.fastrobust_emu._selftest_mma(a, b, c)
    torch.testing.assert_close(d, a.float() @ b.float() + c, rtol=0, atol=0)


def test_mma_m16n8k8_tf32_follows_the_ptx_register_layout():
    """mma.sync m16n8k8 of tf32 values: A (16 x 8) in rows g, g + 8 and columns t, t + 4 of
    each lane, B (8 x 8) in rows t, t + 4; D = A B + C exactly (quarters: tf32 values whose
    products and sums are exact in float)."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(-16, 17, (16, 8), generator=gen) / 4
    b = torch.randint(-16, 17, (8, 8), generator=gen) / 4
    c = torch.randint(-20, 21, (16, 8), generator=gen).float()
    d = torch.ops.fastrobust_emu._selftest_mma(a, b, c)
    torch.testing.assert_close(d, a @ b + c, rtol=0, atol=0)


def test_mma_m16n8k8_rounds_with_cvt_rna_and_rejects_unrounded_operands():
    """The kernel's operands go through tf32_bits (cvt.rna.tf32.f32): 1/3 becomes the nearest
    tf32 value. Registers that still hold low mantissa bits are refused, as the hardware's result
    on them is undefined."""
    a = torch.full((16, 8), 1 / 3)
    ones, zeros = torch.ones(8, 8), torch.zeros(16, 8)
    d = torch.ops.fastrobust_emu._selftest_mma(a, ones, zeros)
    assert torch.equal(d, torch.full((16, 8), 8 * to_tf32(torch.tensor(1 / 3)).item()))
    with pytest.raises(RuntimeError, match="operand was not rounded to tf32"):
        torch.ops.fastrobust_emu._selftest_mma(a, ones, zeros, round_tf32=False)
    exact = torch.ops.fastrobust_emu._selftest_mma(to_tf32(a), ones, zeros, round_tf32=False)
    assert torch.equal(exact, d)


@pytest.mark.parametrize("dtype, depth", [(torch.bfloat16, 16), (torch.float32, 8)], ids=str)
def test_mma_m16n8_is_counted_by_its_depth(dtype, depth):
    """m16n8k16 is half a 16 x 16 x 16 product, the tf32 m16n8k8 a quarter: 2 x 16 x 8 x k FLOPs."""
    from fastrobust import cost_model

    a = torch.ones(16, depth, dtype=dtype)
    b = torch.ones(depth, 8, dtype=dtype)
    c = torch.zeros(16, 8)
    (launch,) = cost_model.model(lambda: torch.ops.fastrobust_emu._selftest_mma(a, b, c))
    assert launch.counters["mma_ops"] == 1 and launch.mma_flops == 2 * 16 * 8 * depth


@pytest.mark.parametrize("src_bytes", [16, 8, 0])
def test_cp_async_lands_at_the_wait_and_zero_fills(src_bytes):
    """cp.async of 16 bytes per lane: the first src_bytes come from global memory, the rest are
    zeros; after the wait and a barrier the lanes read each other's copies."""
    src = torch.arange(1, 129).float()
    out = torch.ops.fastrobust_emu._selftest_cp_async(src, src_bytes)
    copied = src.view(32, 4).clone()
    copied[:, src_bytes // 4:] = 0
    torch.testing.assert_close(out.view(32, 4), copied, rtol=0, atol=0)


def test_cp_async_counts_one_16_byte_access_per_lane():
    from fastrobust import cost_model

    src = torch.ones(128)
    (launch,) = cost_model.model(lambda: torch.ops.fastrobust_emu._selftest_cp_async(src, 16))
    c = launch.counters
    # the copy: one warp-wide load of 512 contiguous bytes; its landing one conflict-free store
    assert launch.load_sector_efficiency == 1.0 and c["global_load_bytes"] == 512
    assert launch.bank_conflict_factor == 1.0
