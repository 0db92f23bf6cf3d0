"""CMakeLists.txt builds the ops as a libtorch shared library that torch.ops.load_library
loads, with working kernels (CPU-only build: the CUDA sources are compiled by setup.py)."""
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


def cuda_hints():
    """A CUDA build of torch wants the CUDA libraries found at configure time, even for a
    CPU-only build of ours; pip's CUDA wheels (nvidia/cu13) hold them."""
    hints = {"TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    args = []
    if torch.version.cuda is None:
        return args, hints
    import site

    for base in site.getsitepackages():
        cu = pathlib.Path(base) / "nvidia" / f"cu{torch.version.cuda.split('.')[0]}"
        if (cu / "lib").is_dir():
            major = torch.version.cuda.split(".")[0]
            args += [
                f"-DCUDA_INCLUDE_DIRS={cu / 'include'}",
                f"-DCUDA_CUDART_LIBRARY={cu / 'lib' / f'libcudart.so.{major}'}",
                f"-DCUDA_nvrtc_LIBRARY={cu / 'lib' / f'libnvrtc.so.{major}'}",
            ]
            break
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if os.path.isdir(cuda_home):
        args.append(f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}")
    return args, hints


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_builds_loadable_library(tmp_path):
    build = tmp_path / "build"
    extra, env_hints = cuda_hints()
    env = {**os.environ, **env_hints}
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), *generator, "-DWITH_CUDA=OFF",
         f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", *extra],
        check=True, env=env, capture_output=True, text=True,
    )
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, env=env, capture_output=True, text=True)
    lib = build / "libfastrobust_ops.so"
    assert lib.is_file()
    # A fresh interpreter: the ops must not already be registered by fastrobust._C.
    script = textwrap.dedent(
        f"""
        import torch, torch.nn.functional as F
        torch.ops.load_library({str(lib)!r})
        torch.manual_seed(0)
        x, w, b = torch.randn(2, 3, 7, 5), 0.3 * torch.randn(3, 1, 3, 3), 0.3 * torch.randn(3)
        y = torch.ops.fastrobust.sparta(x, w, b)
        ref = torch.relu(x) * 2 * torch.sigmoid(F.conv2d(x, w, b, padding=1, groups=3))
        torch.testing.assert_close(y, ref)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "ok"
