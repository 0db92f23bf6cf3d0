"""ptxas -v's resource report, parsed (no torch: setup.py loads this file at build time)."""
import re
from typing import Dict

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_BARRIERS = re.compile(r"used (\d+) barriers")


def parse_ptxas(text: str) -> Dict[str, dict]:
    """{mangled function: usage} from ptxas -v output. Entry functions (kernels) get
    registers, barriers, static_smem and arch; every function, kernel or not, gets
    stack_frame, spill_stores and spill_loads."""
    functions: Dict[str, dict] = {}
    current = pending = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = m.group(1)
            functions.setdefault(current, {})
            functions[current].update(kernel=True, arch=m.group(2), registers=0, barriers=0, static_smem=0)
            continue
        m = _PROPERTIES.search(line)
        if m:
            pending = m.group(1)
            continue
        m = _FRAME.search(line)
        if m and pending is not None:
            usage = functions.setdefault(pending, {"kernel": False})
            usage.update(stack_frame=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            pending = None
            continue
        m = _USED.search(line)
        if m and current is not None:
            usage = functions[current]
            usage["registers"] = int(m.group(1))
            smem = _SMEM.search(line)
            usage["static_smem"] = int(smem.group(1)) if smem else 0
            barriers = _BARRIERS.search(line)
            usage["barriers"] = int(barriers.group(1)) if barriers else 0
    return functions
