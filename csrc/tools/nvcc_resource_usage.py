"""nvcc with ptxas's resource report kept: setup.py builds the CUDA sources through this.

    python nvcc_resource_usage.py <nvcc arguments>

runs nvcc (FR_NVCC: the nvcc command, default $CUDA_HOME/bin/nvcc) with -Xptxas=-v added,
writes ptxas's lines (registers, spills, stack frame, static shared memory of every kernel)
next to the object file as <object>.resources, and passes every other line of nvcc's error
stream through. setup.py gathers the .resources files into the build info
(fastrobust/_build_info.py, "kernel_resources"); fastrobust.kernel_resources reads them.
Nothing else about the compilation changes.
"""
import os
import shlex
import subprocess
import sys


def nvcc_command():
    configured = os.environ.get("FR_NVCC")
    if configured:
        return shlex.split(configured)
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return [os.path.join(home, "bin", "nvcc")]


def output_path(args):
    for i, arg in enumerate(args):
        if arg == "-o" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("-o") and len(arg) > 2 and not arg.startswith("-o="):
            return arg[2:]
    return None


def is_ptxas_report(line: str) -> bool:
    # ptxas -v writes "ptxas info    : ..." lines and indented continuation lines
    # ("    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads").
    return line.startswith("ptxas info") or "bytes stack frame" in line


def main(argv):
    args = list(argv)
    out = output_path(args)
    if out is None:  # not a compilation that writes an object (e.g. a version query)
        return subprocess.call(nvcc_command() + args)
    proc = subprocess.run(nvcc_command() + args + ["-Xptxas=-v"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, errors="replace")
    sys.stdout.write(proc.stdout)
    report, passed = [], []
    for line in proc.stderr.splitlines(keepends=True):
        (report if is_ptxas_report(line) else passed).append(line)
    sys.stderr.write("".join(passed))
    if proc.returncode == 0:
        with open(out + ".resources", "w") as f:
            f.write("".join(report))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
