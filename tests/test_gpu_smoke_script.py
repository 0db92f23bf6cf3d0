"""benchmarks/gpu_smoke.py (the script compute-sanitizer runs on a GPU) must itself be right:
run it here on the CPU kernels, and on the emulated CUDA kernels for the cheap ops."""
import pytest

import fastrobust
from benchmarks import gpu_smoke


@pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")
def test_smoke_passes_on_the_cpu_kernels(capsys):
    assert gpu_smoke.main(["--device", "cpu"]) == gpu_smoke.EXIT_OK, capsys.readouterr().out


@pytest.mark.skipif(not fastrobust.HAS_EMU, reason="built without FR_EMULATE_CUDA=1")
def test_smoke_passes_on_the_emulated_kernels(capsys):
    assert gpu_smoke.main(["--device", "emu", "--op", "margin_loss"]) == gpu_smoke.EXIT_OK, capsys.readouterr().out
