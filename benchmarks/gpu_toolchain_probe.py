"""Does a C++ error message with a number in it survive this machine's compiler and libstdc++?

On the first GPU machine (H200, Ubuntu 24.04, g++ 13.3 behind /opt/gcc, libstdc++ 6.0.33,
torch 2.11) every TORCH_CHECK of our extension whose message streams an integer (a rank, a
shape, a kernel size) crashed the process with a segmentation fault inside c10::str, on the CPU
and the CUDA backend alike, while the checks whose messages hold only strings and dtypes raised
as they should. The same sources raise correctly here (Debian, g++ 12, torch 2.11 and 2.14).

This probe separates the toolchain from our code: it builds three tiny programs with the
compiler torch's extensions use (CXX, else c++) and runs each in its own process:

- ``plain``: a C++ program that streams an int into a std::ostringstream;
- ``ext-default``: a torch extension (cpp_extension.load_inline, torch's default flags) whose
  functions raise TORCH_CHECK with an int and with a shape in the message;
- ``ext-fastrobust``: the same extension with our flags (setup.py: -O3 -fno-trapping-math
  -fopenmp).

    python benchmarks/gpu_toolchain_probe.py [--build-dir DIR]

Prints one line per program and call (ok / the signal that ended it); exit 0 when every call
behaved, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import List, Tuple

PLAIN_SOURCE = r"""
#include <iostream>
#include <sstream>
int main() {
  std::ostringstream ss;
  ss << "rank " << 4 << ", size " << 123456789012345LL;
  std::cout << ss.str() << std::endl;
  return ss.str() == "rank 4, size 123456789012345" ? 0 : 3;
}
"""

EXTENSION_SOURCE = r"""
#include <torch/extension.h>
#include <sstream>

std::string stream_int(int64_t n) {
  std::ostringstream ss;
  ss << "n=" << n;
  return ss.str();
}

void check_string(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 99, "x has the wrong rank");
}

void check_int(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 99, "x must be a ", 99, "-D tensor, got ", x.dim());
}

void check_sizes(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 99, "x must have shape [99], got ", x.sizes());
}
"""

# (function, whether it must raise RuntimeError)
EXTENSION_CALLS = [("stream_int", False), ("check_string", True), ("check_int", True), ("check_sizes", True)]
FASTROBUST_CFLAGS = ["-O3", "-fno-trapping-math", "-fopenmp"]


def compiler() -> str:
    return os.environ.get("CXX") or shutil.which("c++") or "g++"


def run(cmd: List[str], timeout: float = 300) -> Tuple[int, str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "timed out"
    return out.returncode, (out.stdout + out.stderr).strip()


def describe(rc: int) -> str:
    if rc == 0:
        return "ok"
    if rc < 0:
        return f"killed by signal {-rc}"
    return f"exit {rc}"


def probe_plain(build_dir: Path) -> List[Tuple[str, str, str]]:
    src, exe = build_dir / "plain.cpp", build_dir / "plain"
    src.write_text(PLAIN_SOURCE)
    rc, out = run([compiler(), "-O2", str(src), "-o", str(exe)])
    if rc != 0:
        return [("plain", "build", f"build failed: {out[-500:]}")]
    rc, out = run([str(exe)])
    return [("plain", "stream an int", describe(rc) + ("" if rc == 0 else f": {out[-300:]}"))]


def build_extension(name: str, cflags: List[str], build_dir: Path) -> Tuple[int, str]:
    """Builds the extension in a child process (a crash in the build tooling stays there)."""
    script = textwrap.dedent(f"""
        import sys
        from torch.utils.cpp_extension import load_inline
        load_inline({name!r}, cpp_sources=[{EXTENSION_SOURCE!r}],
                    functions={[f for f, _ in EXTENSION_CALLS]!r},
                    extra_cflags={cflags!r}, extra_ldflags={(["-fopenmp"] if "-fopenmp" in cflags else [])!r},
                    build_directory={str(build_dir)!r}, verbose=False)
    """)
    return run([sys.executable, "-c", script], timeout=600)


def call_extension(name: str, build_dir: Path, function: str, must_raise: bool) -> str:
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(build_dir)!r})
        import {name} as ext
        try:
            out = ext.{function}(torch.zeros(2, 3)) if {function!r} != "stream_int" else ext.{function}(4)
        except RuntimeError as exc:
            print("raised:", str(exc).splitlines()[0])
            sys.exit(0 if {must_raise!r} else 4)
        print("returned:", out)
        sys.exit(0 if not {must_raise!r} else 5)
    """)
    rc, out = run([sys.executable, "-c", script], timeout=120)
    return describe(rc) + (f" ({out.splitlines()[-1]})" if out else "")


def probe_extension(label: str, cflags: List[str], root: Path) -> List[Tuple[str, str, str]]:
    name = "fr_probe_" + label.replace("-", "_")
    build_dir = root / name
    build_dir.mkdir(parents=True, exist_ok=True)
    rc, out = build_extension(name, cflags, build_dir)
    if rc != 0:
        return [(label, "build", f"{describe(rc)}: {out[-500:]}")]
    return [(label, function, call_extension(name, build_dir, function, must_raise))
            for function, must_raise in EXTENSION_CALLS]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", type=Path, default=None, help="where to build (default: a temporary folder)")
    args = p.parse_args(argv)
    root = args.build_dir or Path(tempfile.mkdtemp(prefix="fr_toolchain_"))
    root.mkdir(parents=True, exist_ok=True)
    rc, version = run([compiler(), "--version"])
    print(f"compiler: {compiler()} ({version.splitlines()[0] if version else 'unknown'})")
    rows = probe_plain(root)
    rows += probe_extension("ext-default", [], root)
    rows += probe_extension("ext-fastrobust", FASTROBUST_CFLAGS, root)
    for program, call, outcome in rows:
        print(f"{program:<15} {call:<14} {outcome}")
    return 0 if all(outcome.startswith("ok") for _, _, outcome in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
