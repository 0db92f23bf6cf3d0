"""Build of fastrobust._C (C++ always; CUDA and the CUDA emulator on request).

Environment switches:
  FORCE_CUDA=1            compile the CUDA sources even without a visible GPU (FORCE_CUDA=0: never)
  TORCH_CUDA_ARCH_LIST    e.g. "9.0"; when set, CUDA sources are compiled for these archs
  FR_EMULATE_CUDA=1       also compile the CUDA device code with the CPU emulator, as the
                          fastrobust_emu ops (used by the tests on machines without a GPU)
  DEBUG=1                 -O0 -g, assertions on
  MAX_JOBS                parallel compile jobs (read by torch's ninja build)
  NVCC_FLAGS              extra nvcc flags
Install with `pip install --no-build-isolation -e .` so the installed torch is used.
"""
import glob
import os
import pprint
import sys

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def env_flag(name, default=None):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def want_cuda():
    import torch

    forced = env_flag("FORCE_CUDA")
    if forced is not None:
        return forced
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def build_config():
    import torch

    with_cuda = want_cuda()
    if with_cuda and CUDA_HOME is None:
        sys.exit("setup.py: CUDA build requested but no CUDA toolkit found; set CUDA_HOME")
    return {
        "with_cuda": with_cuda,
        "with_cuda_emulation": bool(env_flag("FR_EMULATE_CUDA", False)),
        "debug": bool(env_flag("DEBUG", False)),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cuda_home": CUDA_HOME if with_cuda else None,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "max_jobs": os.environ.get("MAX_JOBS"),
    }


def extension(cfg):
    srcs = ["csrc/fastrobust.cpp"] + sources("csrc/ops/*.cpp") + sources("csrc/cpu/*.cpp")
    macros = []
    # -fno-trapping-math: we never enable FP exceptions, and under the default GCC keeps
    # branches around float conversions that stop the CPU kernels' loops from vectorising.
    # It changes no result (no reassociation, no finite-math assumptions).
    cxx = ["-O0", "-g"] if cfg["debug"] else ["-O3", "-fno-trapping-math"]
    # ATen's parallel_for is inline OpenMP code: without -fopenmp it runs on one thread.
    cxx.append("-fopenmp")
    nvcc = ["-O0", "-g", "-G"] if cfg["debug"] else ["-O3", "-lineinfo"]
    nvcc += os.environ.get("NVCC_FLAGS", "").split()
    if cfg["debug"]:
        macros.append(("FR_DEBUG", "1"))
        cxx.append("-UNDEBUG")
    if cfg["with_cuda_emulation"]:
        srcs += sources("csrc/emu/*.cpp")
        macros.append(("FR_WITH_EMU", "1"))
    kwargs = dict(define_macros=macros, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    if cfg["with_cuda"]:
        srcs += sources("csrc/cuda/*.cu")
        macros.append(("FR_WITH_CUDA", "1"))
        kwargs["extra_compile_args"]["nvcc"] = nvcc
        return CUDAExtension("fastrobust._C", srcs, **kwargs)
    return CppExtension("fastrobust._C", srcs, **kwargs)


def write_build_info(cfg):
    path = os.path.join(ROOT, "fastrobust", "_build_info.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py at build time.\n")
        f.write(f"BUILD_INFO = {pprint.pformat(cfg)}\n")


CONFIG = build_config()
print("fastrobust build configuration:")
for key, value in CONFIG.items():
    print(f"  {key:20s} {value}")
write_build_info(CONFIG)

setup(
    packages=find_packages(include=["fastrobust", "fastrobust.*"]),
    ext_modules=[extension(CONFIG)],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
