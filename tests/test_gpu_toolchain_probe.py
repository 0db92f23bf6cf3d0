"""benchmarks/gpu_toolchain_probe.py: its plain C++ probe builds and runs here, and a crash is
told apart from a clean exit."""
import shutil
from pathlib import Path

import pytest

from benchmarks import gpu_toolchain_probe as probe


@pytest.mark.skipif(shutil.which(probe.compiler()) is None and not Path(probe.compiler()).exists(),
                    reason="no C++ compiler")
def test_plain_program_streams_an_int(tmp_path):
    [(program, call, outcome)] = probe.probe_plain(tmp_path)
    assert (program, call, outcome) == ("plain", "stream an int", "ok")


def test_signals_and_exit_codes_are_told_apart():
    assert probe.describe(0) == "ok"
    assert probe.describe(-11) == "killed by signal 11"
    assert probe.describe(5) == "exit 5"
