#!/usr/bin/env bash
# The wheel as a user gets it: `python -m build --wheel` (the CPU build: no FORCE_CUDA, no
# emulator) from a copy of the source tree, installed non-editable with its dependencies into a
# fresh venv, then `fastrobust info`, `fastrobust train` (the main job's defaults) and
# `fastrobust bench sparta --quick` run from a temporary folder outside the tree, where only the
# installed package can be imported.
#   bash .ci/wheel.sh [WORK_DIR]      (default: a new temporary folder, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py=$root/.venv/bin/python

work=${1:-}
if [ -z "$work" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work/src" "$work/dist" "$work/run"

# the tracked files and the new ones git does not ignore (no build products, no .venv)
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src"

echo "== wheel: python -m build --wheel (CPU build)" >&2
start=$(date +%s)
cxx=${CXX:-c++}
command -v ccache >/dev/null 2>&1 && cxx="ccache $cxx"
(cd "$work/src" && env -u FORCE_CUDA -u FR_EMULATE_CUDA -u TORCH_CUDA_ARCH_LIST -u PYTORCH_NVCC \
  CXX="$cxx" MAX_JOBS=${MAX_JOBS:-2} "$py" -m build --wheel --no-isolation --outdir "$work/dist" > "$work/build.log" 2>&1) \
  || { tail -40 "$work/build.log" >&2; exit 1; }
wheel=$(ls "$work"/dist/fastrobust-*.whl)
echo "   $(basename "$wheel") in $(( $(date +%s) - start )) s" >&2

echo "== wheel: a fresh venv" >&2
"$py" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$wheel"

cd "$work/run"
export PYTHONNOUSERSITE=1
unset PYTHONPATH || true
fr=$work/venv/bin/fastrobust
"$work/venv/bin/python" - "$work/venv" <<'PY'
import sys
import fastrobust
import fastrobust._C  # the compiled CPU kernels came with the wheel
from fastrobust import bench  # the benchmark suites too
venv = sys.argv[1]
for module in (fastrobust, fastrobust._C, bench):
    assert module.__file__.startswith(venv), f"{module.__name__} imported from {module.__file__}, not the venv"
assert fastrobust.HAS_EXT and not fastrobust.WITH_CUDA, (fastrobust.HAS_EXT, fastrobust.WITH_CUDA)
print("   imported from", fastrobust.__file__)
PY

echo "== wheel: fastrobust info" >&2
"$fr" info
echo "== wheel: fastrobust train (defaults)" >&2
"$fr" train --no-progress
ls runs/*/last.pt runs/*/eval/report.json > /dev/null
echo "== wheel: fastrobust bench sparta --quick" >&2
"$fr" bench sparta --quick --no-compile --quiet
"$work/venv/bin/python" -c "
import json
result = json.load(open('bench-results/sparta-cpu-quick.json'))
assert result['complete'] and result['cases'], 'sparta --quick: no complete result'
bad = [(c['case'], n) for c in result['cases'] for n, i in c['implementations'].items() if not i.get('correct')]
assert not bad, bad
print('   bench-results/sparta-cpu-quick.json:', len(result['cases']), 'cases, all correct')
"
echo "== wheel: passed" >&2
