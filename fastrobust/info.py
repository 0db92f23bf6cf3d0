"""Build and kernel information: `python -m fastrobust.info` or `fastrobust info`."""
import json
import platform
import sys
from pathlib import Path

import torch

from . import _extension
from .ops import OPS


def device_name(device) -> str:
    """A readable name of a device ("cuda:0", "cpu" or a torch.device): the GPU's name, or
    the CPU's model name from /proc/cpuinfo (else what platform reports)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _has_kernel(qualified_name: str, key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(qualified_name, key))
    except RuntimeError:  # op not registered (extension not built)
        return False


def kernel_table():
    """{op: {"cpu": bool, "cuda": bool, "cuda_emulated": bool}} for every public op; an op
    counts as having a backend kernel when the op and all its backward ops have one."""
    table = {}
    for op, names in OPS.items():
        table[op] = {
            "cpu": all(_has_kernel(f"fastrobust::{n}", "CPU") for n in names),
            "cuda": all(_has_kernel(f"fastrobust::{n}", "CUDA") for n in names),
            "cuda_emulated": all(_has_kernel(f"fastrobust_emu::{n}", "CPU") for n in names),
        }
    return table


def collect():
    try:
        from ._build_info import BUILD_INFO
    except ImportError:
        BUILD_INFO = None
    from . import __version__

    return {
        "fastrobust": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "extension_loaded": _extension.HAS_EXT,
        "extension_error": _extension.EXT_ERROR,
        "build": BUILD_INFO,
        "ops": kernel_table(),
    }


def format_report(info) -> str:
    yes = {True: "yes", False: "no"}
    lines = [
        f"fastrobust {info['fastrobust']}  (python {info['python']}, torch {info['torch']}, "
        f"torch CUDA {info['torch_cuda'] or 'none'})",
        f"GPU: {info['gpu'] or 'none visible'}",
    ]
    if not info["extension_loaded"]:
        lines.append(f"compiled extension: NOT LOADED ({info['extension_error']}); ops use the reference")
    else:
        lines.append("compiled extension: loaded")
    build = info["build"]
    if build:
        lines.append(
            "build: with_cuda={with_cuda} cuda_arch_list={cuda_arch_list} cuda_emulation={with_cuda_emulation} "
            "debug={debug} torch={torch_version}".format(**build)
        )
    lines.append("")
    width = max([len("op")] + [len(op) for op in info["ops"]])
    lines.append(f"{'op':{width}s} {'CPU':>5s} {'CUDA':>5s} {'CUDA emulated':>14s}")
    for op, row in info["ops"].items():
        lines.append(f"{op:{width}s} {yes[row['cpu']]:>5s} {yes[row['cuda']]:>5s} {yes[row['cuda_emulated']]:>14s}")
    return "\n".join(lines)


def kernels_report() -> dict:
    """The CUDA kernels' ptxas resources and the H100 occupancy of every launch at the CUDA
    benchmark shapes (fastrobust.kernel_resources); needs the emulated build."""
    if not _extension.HAS_EMU:
        raise RuntimeError("--kernels needs the extension built with the CUDA emulator (FR_EMULATE_CUDA=1): "
                           "it records the launch configurations by dry runs of the emulated ops")
    from . import kernel_resources

    return kernel_resources.report()


def parser():
    import argparse

    p = argparse.ArgumentParser(prog="python -m fastrobust.info", description=__doc__)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--kernels", action="store_true",
                   help="the CUDA kernels' registers, spills and shared memory (ptxas, recorded at build time) "
                        "and the occupancy on an H100 of each launch at the CUDA benchmark shapes")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.kernels:
        from . import kernel_resources

        try:
            report = kernels_report()
        except RuntimeError as e:
            print(f"fastrobust info: {e}", file=sys.stderr)
            return 2
        print(json.dumps(report, indent=2) if args.json else kernel_resources.format_report(report))
        return 0
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
