#!/usr/bin/env bash
# Builds a variant of the extension (C++ and the CUDA emulator, no nvcc) with extra compiler
# flags into build/variant-NAME, as a copy of the package that tests can import:
#   bash .ci/variant.sh NAME "CXXFLAGS" ["LDFLAGS"]   ->   PYTHONPATH=build/variant-NAME/pkg
# The in-place build the other tests use is not touched (setup.py's build info of the variant
# goes into the copy; the source tree's is put back).
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 cxxflags=$2 ldflags=${3:-}
root=build/variant-$name
rm -rf "$root/pkg"
mkdir -p "$root/pkg"
cp -r fastrobust "$root/pkg/fastrobust"
rm -f "$root"/pkg/fastrobust/_C*.so
info=fastrobust/_build_info.py
saved=$(mktemp)
cp "$info" "$saved"
status=0
FORCE_CUDA=0 FR_EMULATE_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} FR_CXXFLAGS="$cxxflags" FR_LDFLAGS="$ldflags" \
  .venv/bin/python setup.py -q build_ext -b "$root/lib" -t "$root/tmp" > "$root/build.log" 2>&1 || status=$?
cp "$info" "$root/pkg/$info"
cp "$saved" "$info"
rm -f "$saved"
if [ "$status" -ne 0 ]; then
  tail -40 "$root/build.log"
  exit "$status"
fi
cp "$root"/lib/fastrobust/_C*.so "$root/pkg/fastrobust/"
echo "variant $name: $root/pkg"
