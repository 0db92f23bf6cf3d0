"""The emulator's cost counters on kernels whose memory behaviour is known by hand
(csrc/emu/cost_selftest.cpp): coalescing in 32-byte sectors, shared-memory bank conflicts,
SIMT multiply-adds, block sampling and its scaling."""
import pytest
import torch

import fastrobust
from fastrobust import cost_model

pytestmark = pytest.mark.skipif(not fastrobust.HAS_EMU, reason="needs the CUDA emulator build (FR_EMULATE_CUDA=1)")


def run(name, n=512, model_blocks=64):
    out = {}

    def call():
        out["y"] = torch.ops.fastrobust_emu._cost_case(name, n)

    launches = cost_model.model(call, model_blocks)
    assert len(launches) == 1
    return launches[0], out["y"]


def test_coalesced_copy_uses_whole_sectors():
    launch, y = run("coalesced_copy")
    torch.testing.assert_close(y, torch.arange(512.0), rtol=0, atol=0)
    c = launch.counters
    assert c["blocks_run"] == 4 and launch.scale == 1.0
    assert c["global_load_requests"] == c["global_store_requests"] == 512 // 32
    assert c["global_load_sectors"] == c["global_store_sectors"] == 4 * 16  # 128 bytes per warp
    assert launch.sector_efficiency == 1.0
    assert launch.dram_bytes == 2 * 512 * 4  # read once, written once
    assert launch.bank_conflict_factor == 1.0 and c["shared_requests"] == 0


def test_stride_8_float_load_uses_an_eighth_of_each_sector():
    launch, y = run("strided_load")
    torch.testing.assert_close(y, 8 * torch.arange(512.0), rtol=0, atol=0)
    assert launch.counters["global_load_sectors"] == 32 * 16
    assert launch.load_sector_efficiency == pytest.approx(1 / 8)
    assert launch.store_sector_efficiency == 1.0
    assert launch.dram_bytes == 512 * 32 + 512 * 4


def test_broadcast_load_is_one_sector_of_four_useful_bytes():
    launch, y = run("broadcast_load")
    assert (y == 0).all()
    c = launch.counters
    assert c["global_load_sectors"] == c["global_load_requests"] == 16
    assert c["global_load_bytes"] == 4 * 16
    assert launch.dram_bytes == 32 + 512 * 4


@pytest.mark.parametrize("name, factor", [("shared_conflict", 32), ("shared_linear", 1), ("shared_broadcast", 1)])
def test_bank_conflict_factor(name, factor):
    launch, _ = run(name)
    c = launch.counters
    assert c["shared_requests"] == 2 * 512 // 32  # a write and a read per warp
    assert launch.bank_conflict_factor == factor
    if name == "shared_conflict":
        assert c["shared_wavefronts"] == 32 * c["shared_requests"]


def test_lanes_realign_where_they_meet():
    """A lane-0-only access before a __syncwarp is a warp access of its own: the accesses after
    the meeting group lane by lane again (no false conflict, one request more per warp)."""
    launch, y = run("shared_realigned")
    torch.testing.assert_close(y, torch.arange(512.0) % 128, rtol=0, atol=0)
    c = launch.counters
    assert c["shared_requests"] == 3 * 512 // 32
    assert c["shared_wavefronts"] == c["shared_requests"]
    assert launch.bank_conflict_factor == 1.0


def test_multiply_adds_are_counted_per_thread_that_does_them():
    n = 500  # 4 blocks of 128 threads, 12 of them idle
    launch, y = run("dot_rows", n=n)
    torch.testing.assert_close(y, 21.0 * torch.arange(1.0, n + 1), rtol=0, atol=0)  # sum(range(7)) * (i + 1)
    assert launch.counters["fma_ops"] == 7 * n
    assert launch.summary()["simt_flops"] == 2 * 7 * n and launch.summary()["mma_flops"] == 0
    sampled, _ = run("dot_rows", n=128 * 40, model_blocks=5)
    assert sampled.counters["fma_ops"] == 7 * 128 * 5
    assert sampled.flops == 2 * 7 * 128 * 40  # scaled to the grid


def test_a_sample_of_blocks_is_scaled_to_the_grid():
    full, _ = run("coalesced_copy", n=128 * 40, model_blocks=1000)
    sampled, y = run("coalesced_copy", n=128 * 40, model_blocks=5)
    assert (full.counters["blocks_run"], sampled.counters["blocks_run"]) == (40, 5)
    assert sampled.scale == 8.0
    assert sampled.dram_bytes == full.dram_bytes
    assert int((y != 0).sum()) < 128 * 40  # only the sampled blocks wrote


def test_counting_is_off_outside_the_model():
    records = []
    fastrobust._C._emu_start_launch_log(True, 0)
    try:
        torch.ops.fastrobust_emu._cost_case("coalesced_copy", 256)
    finally:
        records = fastrobust._C._emu_stop_launch_log()
    assert records[0][4] == {}
    with pytest.raises(ValueError, match="model_blocks must be >= 1"):
        cost_model.model(lambda: None, 0)


MODEL_FIELDS = {"op", "kernel", "case", "dtype", "bytes", "min_bytes", "flops", "min_flops", "sector_efficiency",
                "bank_conflict_factor", "waves", "modeled_us", "baseline_modeled_us"}


def test_bench_model_writes_the_suite_json(tmp_path):
    import json

    from fastrobust.bench import run

    assert run.main(["cifs", "--model", "h100", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "cifs-h100-model-quick.json").read_text())
    assert result["model"] is True and result["gpu"] == "H100 SXM" and result["blocks_per_launch"] == 2
    records = result["records"]
    assert all(MODEL_FIELDS <= set(r) for r in records)
    ops = [r for r in records if r["kernel"] == "(op)"]
    kernels = [r for r in records if r["kernel"] != "(op)"]
    assert len(ops) == 12  # 3 shapes x 2 dtypes x forward and backward
    assert {r["kernel"].split("<")[0] for r in kernels} == {
        "cifs::reweight_forward_kernel", "cifs::reweight_backward_feat_kernel",
        "cifs::reweight_backward_relevance_kernel"}
    for r in ops:
        # the fused op moves about its minimal bytes (the relevance row is re-read per block)
        assert 0.95 <= r["bytes"] / r["min_bytes"] <= 2.0, r
        assert r["modeled_us"] > 0 and r["baseline_modeled_us"] > 0
        if "backward" in r["case"] and "4, 4)" in r["case"]:
            # a 4x4 sample is one block of the backward: one launch, d never leaves shared memory
            # (the relevance row and its gradient in float32 are all it moves beyond the minimum)
            launches = [k["kernel"] for k in kernels if k["case"] == r["case"]]
            scalar = {"float32": "float", "bfloat16": "BFloat16"}[r["dtype"]]
            assert launches == [f"cifs::reweight_backward_feat_kernel<{scalar}, true>"], r
            assert r["bytes"] / r["min_bytes"] <= 1.05, r
    for r in kernels:
        assert 0 < r["sector_efficiency"] <= 1 and r["bank_conflict_factor"] >= 1


def modelled_and_marked(tmp_path):
    """The PGD suite's quick model in tmp_path, read back (original), and the same file with every
    record's bytes set to -1 (marked, written back): a record still -1 after a partial run was
    kept, not modelled again."""
    import json

    from fastrobust.bench import run

    path = tmp_path / "pgd-h100-model-quick.json"
    assert run.main(["pgd", "--model", "h100", "--quick", "--out", str(tmp_path)]) == 0
    original = json.loads(path.read_text())
    marked = json.loads(path.read_text())
    for r in marked["records"]:
        r["bytes"] = -1.0
    path.write_text(json.dumps(marked))
    return path, original, marked


def test_bench_model_ops_replaces_only_those_records(tmp_path):
    """--model-ops models some ops of a suite again and keeps the other ops' records as they
    were, in the suite's order, noting the update."""
    import json

    from fastrobust.bench import run

    path, original, marked = modelled_and_marked(tmp_path)
    assert run.main(["pgd", "--model", "h100", "--quick", "--model-ops", "margin_loss", "--out", str(tmp_path)]) == 0
    merged = json.loads(path.read_text())
    assert [(r["op"], r["case"], r["kernel"]) for r in merged["records"]] == \
        [(r["op"], r["case"], r["kernel"]) for r in original["records"]]
    for before, kept, after in zip(original["records"], marked["records"], merged["records"]):
        assert after == (before if before["op"] == "margin_loss" else kept)  # the model is deterministic
    assert any(r["op"] == "margin_loss" for r in merged["records"])
    assert [u["ops"] for u in merged["updates"]] == [["margin_loss"]] and merged["argv"] == original["argv"]
    with pytest.raises(SystemExit, match="--model-ops: sparta is not an op of the pgd suite"):
        run.main(["pgd", "--model", "h100", "--quick", "--model-ops", "sparta", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="model the whole suite first"):
        run.main(["pgd", "--model", "h100", "--quick", "--model-ops", "margin_loss", "--out", str(tmp_path / "new")])
    path.rename(tmp_path / "pgd-h100-model.json")  # a file modelled with 2 blocks per launch
    with pytest.raises(SystemExit, match="give --model-blocks 2"):
        run.main(["pgd", "--model", "h100", "--model-blocks", "4", "--model-ops", "margin_loss", "--out",
                  str(tmp_path)])


def test_bench_model_dtypes_replaces_only_those_records(tmp_path):
    """--model-dtypes models the cases of some dtypes again (alone or with --model-ops) and keeps
    the other records as they were."""
    import json

    from fastrobust.bench import run

    path, original, marked = modelled_and_marked(tmp_path)
    assert {r["dtype"] for r in original["records"]} >= {"float32", "bfloat16"}
    assert run.main(["pgd", "--model", "h100", "--quick", "--model-dtypes", "bf16", "--out", str(tmp_path)]) == 0
    merged = json.loads(path.read_text())
    assert [(r["case"], r["kernel"]) for r in merged["records"]] == [(r["case"], r["kernel"]) for r in original["records"]]
    for before, kept, after in zip(original["records"], marked["records"], merged["records"]):
        assert after == (before if before["dtype"] == "bfloat16" else kept)
    assert merged["updates"][-1]["dtypes"] == ["bfloat16"]
    path.write_text(json.dumps(marked))
    assert run.main(["pgd", "--model", "h100", "--quick", "--model-ops", "margin_loss", "--model-dtypes", "fp32",
                     "--out", str(tmp_path)]) == 0
    merged = json.loads(path.read_text())
    for before, kept, after in zip(original["records"], marked["records"], merged["records"]):
        fresh = before["op"] == "margin_loss" and before["dtype"] == "float32"
        assert after == (before if fresh else kept)
    with pytest.raises(SystemExit, match="no case of the pgd suite's ops"):
        run.main(["pgd", "--model", "h100", "--quick", "--model-dtypes", "fp64", "--out", str(tmp_path)])


def test_bench_model_dtypes_tf32_selects_the_fp32_cases_run_as_tf32():
    """--model-dtypes tf32 replaces the records of the fp32 cases run as tf32 alone; fp32 those of
    every fp32 case."""
    from fastrobust.bench import run

    assert run._model_dtypes("tf32, bf16") == ["tf32", "bfloat16"]
    old = {"records": [{"op": "nlm_gaussian", "case": case, "dtype": dtype, **({"math": math} if math else {}),
                        "bytes": 0} for case, dtype, math in (("a", "float32", None), ("b", "float32", "tf32"),
                                                               ("c", "bfloat16", None))]}

    def merged(dtypes):  # the records of a run modelling the cases of dtypes again (bytes 1)
        fresh = [dict(r, bytes=1) for r in old["records"] if run._selected(dtypes, r["dtype"], r.get("math"))]
        result = run._merged_model(old, {"records": fresh, "argv": [], "wall_time_s": 0.0}, ["nlm_gaussian"], dtypes)
        return [(r["case"], r["bytes"]) for r in result["records"]]

    assert merged(["tf32"]) == [("a", 0), ("b", 1), ("c", 0)]
    assert merged(["float32"]) == [("a", 1), ("b", 1), ("c", 0)]


def test_bench_model_rejects_bad_options(tmp_path, capsys):
    from fastrobust.bench import run

    with pytest.raises(SystemExit, match="--model-blocks must be >= 1"):
        run.main(["cifs", "--model", "h100", "--model-blocks", "0", "--out", str(tmp_path)])
    assert run.main(["train", "--model", "h100", "--out", str(tmp_path)]) == 0
    assert "train: no kernels of its own to model" in capsys.readouterr().out


def _round_up(v, m):
    return -(-v // m) * m


def _fma_by_kernel(fn):
    return {launch.name: launch.counters["fma_ops"] for launch in cost_model.model(fn, cost_model.EVERY_BLOCK)}


def test_nlm_simt_kernels_count_the_products_of_their_padded_tiles():
    """The fp32 NLM kernels (csrc/cuda/nlm_kernels.cuh) multiply 32 x 32 tiles of the (query,
    key) plane: each product is counted whole, its depth padded to 32 (the logits' d, the
    backward's dp over C) or to 64-wide output slices (the weighted sums)."""
    emu = torch.ops.fastrobust_emu
    b, d, c, h, w = 2, 40, 72, 5, 7
    gen = torch.Generator().manual_seed(0)
    th, ph = torch.randn(b, d, h, w, generator=gen), torch.randn(b, d, h, w, generator=gen)
    g = torch.randn(b, c, h, w, generator=gen)
    n = h * w
    plane = b * _round_up(n, 32) ** 2  # one multiply-add per (query, key) pair and unit of depth
    assert _fma_by_kernel(lambda: emu.nlm_gaussian(th, ph, g, 1.0)) == {
        "nlm::plane_tile_kernel<float, false>": plane * _round_up(d, 32),
        "nlm::weighted_sum_kernel<float, Grad(0)>": plane * _round_up(c, 64)}
    y, lse = emu.nlm_gaussian(th, ph, g, 1.0)
    gy = torch.randn(y.shape, generator=gen)
    assert _fma_by_kernel(lambda: emu._nlm_gaussian_backward(gy, th, ph, g, y, lse, 1.0)) == {
        "nlm::row_dot_kernel<float>": b * n * c,
        "nlm::plane_tile_kernel<float, true>": plane * (_round_up(d, 32) + _round_up(c, 32)),
        "nlm::weighted_sum_kernel<float, Grad(1)>": plane * _round_up(c, 64),
        "nlm::weighted_sum_kernel<float, Grad(2)>": plane * _round_up(d, 64),
        "nlm::weighted_sum_kernel<float, Grad(3)>": plane * _round_up(d, 64)}
    # up to 64 channels: one pass over the keys, the logits and y's product per key tile
    narrow = g[:, :24]
    assert _fma_by_kernel(lambda: emu.nlm_gaussian(th, ph, narrow, 1.0)) == {
        "nlm::forward_kernel<float>": plane * (_round_up(d, 32) + 64)}


def test_sparta_kernels_count_their_taps():
    """K*K multiply-adds per output forward. The backward recomputes z (K*K) before dx (K*K)
    and the weight gradient (K*K): 3 K*K per element where a block holds the whole plane, more
    where windows overlap (z again on each halo) and where the weight-gradient walk covers a
    tile's part past the image edge."""
    emu = torch.ops.fastrobust_emu
    gen = torch.Generator().manual_seed(0)
    for shape, whole_plane in (((8, 2, 8, 8), True), ((1, 3, 7, 5), True), ((2, 2, 40, 33), False)):
        x, gy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        w, bias = torch.randn(shape[1], 1, 3, 3, generator=gen), torch.randn(shape[1], generator=gen)
        taps = 9 * x.numel()
        assert _fma_by_kernel(lambda: emu.sparta(x, w, bias)) == {"sparta::sparta_forward_kernel<float, 3>": taps}
        backward = _fma_by_kernel(lambda: emu._sparta_backward(gy, x, w, bias))
        assert backward["sparta::reduce_partials_kernel<float>"] == 0
        if whole_plane:
            assert backward["sparta::sparta_backward_kernel<float, 3>"] == 3 * taps, shape
        else:
            assert 3 * taps < backward["sparta::sparta_backward_kernel<float, 3>"] <= 5 * taps, shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_repeated_chunk_launches_cost_what_their_first_did(monkeypatch, dtype):
    """reuse_repeats (what the NLM model cases use): NLM's batch chunks launch the same kernels
    over other samples; modelled once, each repeat gets the counters that running it gives, and
    a launch of another grid (the last, smaller chunk) is run."""
    # the SIMT kernels (the tensor-core ones hold no planes): chunks of 2 samples of float
    # logits (forward), of 1 of p and ds (backward)
    monkeypatch.setenv("FASTROBUST_EMU_SIMT", "1")
    monkeypatch.setenv("FASTROBUST_NLM_PLANE_BYTES", str(2 * 64 * 64 * 4))
    emu = torch.ops.fastrobust_emu
    gen = torch.Generator().manual_seed(0)
    b, d, c, hw = 5, 32, 128, 8  # per-sample strides of whole sectors
    th, ph = (torch.randn(b, d, hw, hw, generator=gen).to(dtype) for _ in range(2))
    g = torch.randn(b, c, hw, hw, generator=gen).to(dtype)
    y, lse = emu.nlm_gaussian(th, ph, g, 1.0)
    gy = torch.randn(y.shape, generator=gen).to(dtype)
    chunked = [lambda: emu._nlm_gaussian_backward(gy, th, ph, g, y, lse, 1.0), lambda: emu.nlm_gaussian(th, ph, g, 1.0)]
    for fn in chunked:
        run_all = cost_model.model(fn, 4)
        reused = cost_model.model(fn, 4, reuse_repeats=True)
        assert [(k.name, k.grid) for k in reused] == [(k.name, k.grid) for k in run_all]
        flags = [k.counters.pop("reused", 0) for k in reused]
        assert sum(flags) >= 2 and not all(flags)
        assert [k.counters for k in reused] == [k.counters for k in run_all]
        assert all("reused" not in k.counters for k in run_all)


@pytest.mark.parametrize("dtype, depth", [(torch.bfloat16, 16), (torch.float32, 8)], ids=str)
def test_a_tensor_core_operation_counts_its_depth(dtype, depth):
    """An m16n16k16 warp product (16-bit inputs) is 2 x 16 x 16 x 16 FLOPs, a tf32 m16n16k8 one half of that."""
    a = torch.ones(16 * 16, dtype=dtype)
    (launch,) = cost_model.model(lambda: torch.ops.fastrobust_emu._selftest_wmma(a, a, False, False, False, 16))
    assert launch.counters["mma_ops"] == 1 and launch.counters["mma_depth"] == depth
    assert launch.mma_flops == 2 * 16 * 16 * depth and launch.simt_flops == 0


def test_tf32_nlm_kernels_count_the_products_of_their_padded_tiles():
    """fp32 on tensor cores (tf32): the m16n8k8 products of the forward and the backward cover
    64-position blocks, 16-position tiles of the other axis, the reductions in chunks of 32 and
    the 8-column tiles that hold the output (nlm_dispatch.kernel_flops of 4-byte elements)."""
    from fastrobust.kernel_cases import with_tf32
    from fastrobust.ops import nlm_dispatch

    emu = torch.ops.fastrobust_emu
    gen = torch.Generator().manual_seed(0)
    b, d, h, w = 2, 40, 5, 7
    n = h * w
    th, ph = torch.randn(b, d, h, w, generator=gen), torch.randn(b, d, h, w, generator=gen)

    def mma_flops(fn):
        return sum(k.mma_flops for k in cost_model.model(with_tf32(fn), cost_model.EVERY_BLOCK))

    for c in (72, 20):
        g = torch.randn(b, c, h, w, generator=gen)
        y, lse = with_tf32(lambda: emu.nlm_gaussian(th, ph, g, 1.0))()
        gy = torch.randn(y.shape, generator=gen)
        forward = mma_flops(lambda: emu.nlm_gaussian(th, ph, g, 1.0))
        backward = mma_flops(lambda: emu._nlm_gaussian_backward(gy, th, ph, g, y, lse, 1.0))
        assert backward == nlm_dispatch.kernel_flops(b, d, c, n, backward=True, element=4), c
        plane = 2 * b * _round_up(n, 64) * _round_up(n, 16)
        assert forward == plane * (_round_up(d, 32) + _round_up(c, 8)), c
        assert forward == nlm_dispatch.kernel_flops(b, d, c, n, backward=False, element=4), c
