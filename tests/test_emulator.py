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


def test_wmma_rejects_what_the_hardware_leaves_undefined():
    a = torch.ones(16, 16).bfloat16()
    misaligned = torch.ones(16 * 16 + 1).bfloat16()[1:]  # 2 bytes past a 32-byte boundary
    with pytest.raises(RuntimeError, match="not aligned to 32 bytes"):
        torch.ops.fastrobust_emu._selftest_wmma(misaligned, a, False, False, False, 16)
    padded = torch.ones(16 * 20).bfloat16()
    with pytest.raises(RuntimeError, match="ldm 4 is not a multiple of 16 bytes"):
        torch.ops.fastrobust_emu._selftest_wmma(padded, padded, False, False, False, 4)
