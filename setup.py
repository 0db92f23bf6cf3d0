"""Build of fastrobust._C (C++ always; CUDA and the CUDA emulator on request).

Environment switches:
  FORCE_CUDA=1            compile the CUDA sources even without a visible GPU (FORCE_CUDA=0: never)
  TORCH_CUDA_ARCH_LIST    e.g. "9.0"; when set, CUDA sources are compiled for these archs
  FR_EMULATE_CUDA=1       also compile the CUDA device code with the CPU emulator, as the
                          fastrobust_emu ops (used by the tests on machines without a GPU)
  DEBUG=1                 -O0 -g, assertions on
  MAX_JOBS                parallel compile jobs (read by torch's ninja build)
  NVCC_FLAGS              extra nvcc flags
  PYTORCH_NVCC            the nvcc command (e.g. with ccache); CUDA sources are compiled through
                          csrc/tools/nvcc_resource_usage.py around it, which keeps ptxas's
                          resource report of every kernel for the build info
Install with `pip install --no-build-isolation -e .` so the installed torch is used.
"""
import glob
import importlib.util
import os
import pprint
import shlex
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
    # FR_CXXFLAGS / FR_LDFLAGS: a variant build (CI's FMA-contracted and AddressSanitizer passes).
    cxx += os.environ.get("FR_CXXFLAGS", "").split()
    link = ["-fopenmp"] + os.environ.get("FR_LDFLAGS", "").split()
    nvcc = ["-O0", "-g", "-G"] if cfg["debug"] else ["-O3", "-lineinfo"]
    nvcc += os.environ.get("NVCC_FLAGS", "").split()
    if cfg["debug"]:
        macros.append(("FR_DEBUG", "1"))
        cxx.append("-UNDEBUG")
    if cfg["with_cuda_emulation"]:
        srcs += sources("csrc/emu/*.cpp")
        macros.append(("FR_WITH_EMU", "1"))
    kwargs = dict(define_macros=macros, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    if cfg["with_cuda"]:
        srcs += sources("csrc/cuda/*.cu")
        macros.append(("FR_WITH_CUDA", "1"))
        kwargs["extra_compile_args"]["nvcc"] = nvcc
        return CUDAExtension("fastrobust._C", srcs, **kwargs)
    return CppExtension("fastrobust._C", srcs, **kwargs)


def write_build_info(cfg, package_dirs=(os.path.join(ROOT, "fastrobust"),)):
    for folder in package_dirs:
        with open(os.path.join(folder, "_build_info.py"), "w") as f:
            f.write("# Written by setup.py at build time.\n")
            f.write(f"BUILD_INFO = {pprint.pformat(cfg)}\n")


NVCC_WRAPPER = os.path.join(ROOT, "csrc", "tools", "nvcc_resource_usage.py")


def compile_cuda_through_wrapper():
    """nvcc runs through csrc/tools/nvcc_resource_usage.py, which adds -Xptxas=-v and keeps the
    report next to each object (torch's ninja build takes the nvcc command from PYTORCH_NVCC)."""
    os.environ["FR_NVCC"] = os.environ.get("PYTORCH_NVCC") or shlex.quote(os.path.join(CUDA_HOME, "bin", "nvcc"))
    os.environ["PYTORCH_NVCC"] = shlex.join([sys.executable, NVCC_WRAPPER])


def kernel_resources(build_temp, cuda_sources):
    """{mangled function: usage} from the ptxas reports of this build's CUDA objects."""
    spec = importlib.util.spec_from_file_location("_fr_ptxas",
                                                  os.path.join(ROOT, "fastrobust", "_ptxas.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stems = {os.path.splitext(os.path.basename(src))[0] for src in cuda_sources}
    reports = sorted(glob.glob(os.path.join(build_temp, "**", "*.resources"), recursive=True))
    reports = [r for r in reports if os.path.basename(r).split(".")[0] in stems]
    if len(reports) != len(stems):
        print(f"setup.py: ptxas reports for {len(reports)} of {len(stems)} CUDA sources; the kernel "
              "resource table is incomplete", file=sys.stderr)
    usage = {}
    for path in reports:
        with open(path) as f:
            usage.update(module.parse_ptxas(f.read()))
    return usage


class BuildWithKernelResources(BuildExtension.with_options(use_ninja=True)):
    """After the build, adds ptxas's report of every CUDA kernel to the build info."""

    def build_extensions(self):
        super().build_extensions()
        if not CONFIG["with_cuda"]:
            return
        cuda_sources = [s for ext in self.extensions for s in ext.sources if s.endswith(".cu")]
        CONFIG["kernel_resources"] = kernel_resources(self.build_temp, cuda_sources)
        package_dirs = [os.path.join(ROOT, "fastrobust")]
        built = os.path.dirname(self.get_ext_fullpath("fastrobust._C"))
        if os.path.isdir(built) and os.path.abspath(built) != os.path.abspath(package_dirs[0]):
            package_dirs.append(built)  # a wheel or a non-in-place build: its copy of the package
        write_build_info(CONFIG, package_dirs)


CONFIG = build_config()
print("fastrobust build configuration:")
for key, value in CONFIG.items():
    print(f"  {key:20s} {value}")
write_build_info(CONFIG)
if CONFIG["with_cuda"]:
    compile_cuda_through_wrapper()

def requirements():
    """The run-time dependencies; torch pinned to the release the extension is compiled against
    (its C++ ABI changes between releases, so a wheel loads only on that one, as torchvision's)."""
    import torch

    release = torch.__version__.split("+")[0]
    return [f"torch=={release}", "numpy", "tqdm", "matplotlib", "scikit-learn", "torchdiffeq"]


setup(
    packages=find_packages(include=["fastrobust", "fastrobust.*"]),
    install_requires=requirements(),
    ext_modules=[extension(CONFIG)],
    cmdclass={"build_ext": BuildWithKernelResources},
)
