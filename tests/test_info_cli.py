"""Build information, `fastrobust info`, and the reference fallback without the extension."""
import importlib
import json
import subprocess
import sys
import warnings

import pytest
import torch

import fastrobust
from fastrobust import info
from fastrobust.cli import main as cli_main
from fastrobust.testing import make_sparta_inputs


def test_info_reports_sparta_kernels():
    report = info.collect()
    assert report["extension_loaded"] == fastrobust.HAS_EXT
    row = report["ops"]["sparta"]
    if fastrobust.HAS_EXT:
        assert row["cpu"]
        assert row["cuda"] == report["build"]["with_cuda"]
        assert row["cuda_emulated"] == report["build"]["with_cuda_emulation"]


def test_python_m_info_prints_table():
    out = subprocess.run([sys.executable, "-m", "fastrobust.info"], check=True, capture_output=True, text=True)
    assert "sparta" in out.stdout and "CUDA" in out.stdout


def test_cli_info_json(capsys):
    assert cli_main(["info", "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert set(parsed["ops"]) >= {"sparta"}


def test_cli_rejects_unknown_command():
    with pytest.raises(SystemExit) as exc:
        cli_main(["frobnicate"])
    assert exc.value.code == 2


def test_fallback_without_extension_uses_reference(monkeypatch):
    from fastrobust import _extension

    sparta_module = importlib.import_module("fastrobust.ops.sparta")  # the module, not the function

    monkeypatch.setattr(sparta_module, "HAS_EXT", False)
    monkeypatch.setattr(_extension, "_warned", set())
    x, w, b = make_sparta_inputs((2, 3, 5, 5), 3)
    with pytest.warns(RuntimeWarning, match="sparta runs its pure-PyTorch reference"):
        y = fastrobust.ops.sparta(x, w, b)
    torch.testing.assert_close(y, fastrobust.reference.sparta(x, w, b))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        fastrobust.ops.sparta(x, w, b)


@pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")
def test_cli_bench_smoke_run_writes_results(tmp_path):
    """`fastrobust bench` end to end on a quick CPU run: every case checked correct first,
    results written as JSON, CSV and a PNG plot under names a full run does not use."""
    rc = cli_main(["bench", "sparta", "--device", "cpu", "--quick", "--no-compile",
                   "--dtype", "fp32", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    result = json.loads((tmp_path / "sparta-cpu-quick.json").read_text())
    assert result["complete"] and result["cases"]
    for case in result["cases"]:
        for name, impl in case["implementations"].items():
            assert impl["correct"], (case["case"], name)
            assert impl["median_s"] > 0
    assert (tmp_path / "sparta-cpu-quick.csv").read_text().count("\n") > len(result["cases"])
    assert (tmp_path / "sparta-cpu-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
