"""The CIFS benchmark suite (fastrobust/bench/cifs.py): a quick CPU run end to end, and its cases."""
import json
import math

import pytest
import torch

import fastrobust
from fastrobust.cli import main as cli_main

HAS_OP = fastrobust.HAS_EXT and hasattr(torch.ops.fastrobust, "cifs_reweight")
KINDS = ("layer linear", "layer mlp", "reweight")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_cifs")
    # torch.compile takes minutes on a small CPU: the smoke run leaves it out.
    rc = cli_main(["bench", "cifs", "--device", "cpu", "--quick", "--no-compile", "--out", str(out), "--quiet"])
    return rc, out, json.loads((out / "cifs-cpu-quick.json").read_text())


@pytest.mark.skipif(not HAS_OP, reason="fastrobust._C has no cifs_reweight kernel")
def test_quick_run_checks_and_times_every_implementation(quick_run):
    rc, out, result = quick_run
    assert rc == 0
    assert result["complete"] and result["suite"] == "cifs"
    kinds = {(c["label"].rsplit(" B", 1)[0], c["dtype"]) for c in result["cases"]}  # "layer mlp B2 ..."
    assert kinds == {(k, d) for k in KINDS for d in ("fp32", "bf16")}
    for case in result["cases"]:
        impls = case["implementations"]
        assert set(impls) == {"reference", "fused", "floor"}, case["case"]
        for name, entry in impls.items():
            where = (case["case"], name)
            assert "error" not in entry, where
            assert entry.get("correct", name == "floor"), where
            assert math.isfinite(entry["median_s"]) and entry["median_s"] > 0, where
        assert impls["floor"]["checked"] is False
        assert all(math.isfinite(r) and r > 0 for r in case["speedup_of_fused"].values()), case["case"]
    assert (out / "cifs-cpu-quick.csv").read_text().count("\n") > len(result["cases"])
    assert (out / "cifs-cpu-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not HAS_OP, reason="fastrobust._C has no cifs_reweight kernel")
def test_quick_run_checks_every_probe_gradient(quick_run):
    """The layer cases compare the gradient of every probe parameter, float32 master weights
    under bf16 autocast."""
    _, _, result = quick_run
    for case in result["cases"]:
        params = set(case["shapes"]) - {"feat", "relevance"}
        assert set(case["implementations"]["fused"]["errors"]) >= {"grad_feat"} | {f"grad_{p}" for p in params}
        if case["dtype"] == "bf16" and params:
            assert case["input_dtypes"] == {p: "fp32" for p in params}


def test_cuda_cases_are_the_issue_shapes():
    from fastrobust.bench import cifs as bench_cifs

    suite = bench_cifs.build_suite("cuda")
    labels = {c.label for c in suite.cases}
    assert labels == {"layer linear B128 C512 4x4 K10", "layer linear B256 C512 4x4 K10",
                      "layer linear B64 C2048 7x7 K1000", "layer mlp B128 C512 4x4 K10",
                      "reweight B128 C512 4x4", "reweight B256 C512 4x4", "reweight B64 C2048 7x7"}
    assert len(suite.cases) == 2 * len(labels)
    assert {c.dtype for c in suite.cases} == {torch.float32, torch.bfloat16}
