#!/usr/bin/env bash
# Everything that needs a real GPU, in one command of at most ~10 minutes (design.md §6):
# build in place against this machine's torch, run the whole test suite with CUDA visible,
# run compute-sanitizer (memcheck, racecheck, synccheck) on benchmarks/gpu_smoke.py, run the
# benchmark suites, and write one JSON report, OUT_DIR/gpu_check.json.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default: benchmarks/results)
#
# Every step is logged to OUT_DIR/logs/<step>.log and recorded in OUT_DIR/steps.tsv; a failing
# step never stops the next one. Exit status: 0 when every step passed, 1 otherwise.
# Environment: PYTHON (default python, else python3); GPU_CHECK_BUDGET_S (default 570: the
# steps share this many seconds, each also has its own cap); SKIP_BUILD=1 uses the build that
# is already there; FR_EMULATE_CUDA (default 1; 0 skips the emulator's translation units, which
# CI tests anyway, for a faster build); GPU_CHECK_TESTS (default: the whole suite; e.g.
# "-m cuda" for the tests that run on the GPU alone); GPU_CHECK_WORKERS (default 8: pytest-xdist
# workers when it is installed, 0 for none); GPU_CHECK_SUITES (default "sparta nlm cifs pgd
# attacks train": the benchmark suites, in this order, each its own step so that a suite cut
# off by the budget keeps the ones before it); GPU_CHECK_BENCH_ARGS (extra arguments of
# benchmarks.run, e.g. --no-compile); WHEELHOUSE (default ./.whl) is a folder of wheels for the
# test tools when there is no internet.
set -u

cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
LOGS="$OUT/logs"
STEPS="$OUT/steps.tsv"
: >"$STEPS"
rm -f "$OUT/junit.xml"

PY=${PYTHON:-$(command -v python || command -v python3)}
BUDGET=${GPU_CHECK_BUDGET_S:-570}
REPORT_RESERVE=20  # seconds kept for writing the report
WHEELHOUSE=${WHEELHOUSE:-.whl}
FAILED=0

# run_step NAME CAP_SECONDS COMMAND...: runs COMMAND under `timeout` (its cap, or what is
# left of the budget), logs it and records "name status rc seconds log" in steps.tsv.
run_step() {
  local name=$1 cap=$2
  shift 2
  local log="$LOGS/$name.log"
  local left=$((BUDGET - SECONDS - REPORT_RESERVE))
  if ((left < 10)); then
    echo "time budget spent before this step" >"$log"
    record "$name" skipped_time_budget - 0 "$log"
    return
  fi
  ((cap > left)) && cap=$left
  echo "== $name (cap ${cap}s): $*" | tee "$log"
  local start=$SECONDS rc
  # bash -c so that COMMAND may be one of the exported functions below; timeout signals
  # the whole process group, pip's and pytest's children included.
  timeout --kill-after=15 "$cap" bash -c '"$@"' "$name" "$@" >>"$log" 2>&1
  rc=$?
  local status=passed
  ((rc == 124 || rc == 137)) && status=timed_out
  ((rc != 0 && rc != 124 && rc != 137)) && status=failed
  record "$name" "$status" "$rc" $((SECONDS - start)) "$log"
  [[ $status == passed ]] || tail -n 25 "$log"
}

record() {  # name status rc seconds log
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$STEPS"
  echo "-- $1: $2 (rc $3, $4 s)"
  [[ $2 == passed || $2 == skipped_by_request ]] || FAILED=1
}

find_sanitizer() {
  local c
  for c in "$(command -v compute-sanitizer)" "${CUDA_HOME:-}/bin/compute-sanitizer" \
           /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [[ -n $c && -x $c ]] && { echo "$c"; return 0; }
  done
  return 1
}

# Installs the test tools that are missing, from WHEELHOUSE when there is one (no internet
# on the GPU machines), else from the index with a short timeout. Fails if any is missing.
install_test_tools() {
  local missing=() m
  for m in pytest hypothesis expecttest; do
    "$PY" -c "import $m" 2>/dev/null || missing+=("$m")
  done
  if ((${#missing[@]} == 0)); then echo "pytest, hypothesis, expecttest: present"; return 0; fi
  echo "missing: ${missing[*]}"
  if [[ -d $WHEELHOUSE ]]; then
    "$PY" -m pip install --no-index --find-links "$WHEELHOUSE" "${missing[@]}"
  else
    "$PY" -m pip install --timeout 10 --retries 0 "${missing[@]}"
  fi
  local still=()
  for m in "${missing[@]}"; do "$PY" -c "import $m" 2>/dev/null || still+=("$m"); done
  ((${#still[@]} == 0)) || { echo "NOT INSTALLABLE here: ${still[*]} (tests that need them fail or are skipped)"; return 1; }
}

environment() {  # fails only when nvidia-smi does: the rest is for the record
  local rc=0
  nvidia-smi || rc=1
  echo "python: $PY ($("$PY" --version 2>&1))"
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
  command -v nvcc && nvcc --version
  echo "CUDA_HOME=${CUDA_HOME:-}"
  echo "compute-sanitizer: $(find_sanitizer || echo 'not found')"
  git rev-parse HEAD 2>/dev/null || echo "git commit: unavailable"
  return $rc
}

build() {
  env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 FR_EMULATE_CUDA="${FR_EMULATE_CUDA:-1}" \
    "$PY" -m pip install --no-build-isolation --no-deps -v -e .
}

import_check() {
  "$PY" -c 'import fastrobust as fr, torch
print("HAS_EXT", fr.HAS_EXT, "WITH_CUDA", fr.WITH_CUDA, "HAS_EMU", fr.HAS_EMU, "error", fr.EXT_ERROR)
assert fr.HAS_EXT and fr.WITH_CUDA, "extension not built with CUDA"
assert torch.cuda.is_available(), "no CUDA device visible to torch"'
}

# sanitize TOOL: the smoke script under compute-sanitizer. No caching allocator, so that
# every tensor is its own cudaMalloc and memcheck sees out-of-bounds accesses between them.
sanitize() {
  local tool=$1 san
  san=$(find_sanitizer) || { echo "compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)"; return 3; }
  # API errors are not reported: torch's own probing at start-up makes some on purpose,
  # and an API error from our launches raises in the smoke script anyway.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$san" --tool "$tool" --report-api-errors no --error-exitcode 10 \
    "$PY" benchmarks/gpu_smoke.py --device cuda
}

# The suite in parallel when pytest-xdist is there: one intra-op thread per worker, so that
# the workers do not fight over the cores.
tests() {
  local args=(-q -rA -p no:cacheprovider --junitxml="$OUT/junit.xml")
  if (( ${GPU_CHECK_WORKERS:-8} > 0 )) && "$PY" -c "import xdist" 2>/dev/null; then
    args+=(-n "${GPU_CHECK_WORKERS:-8}")
    export OMP_NUM_THREADS=1
  fi
  # shellcheck disable=SC2086  # GPU_CHECK_TESTS is a list of pytest arguments
  "$PY" -m pytest tests "${args[@]}" ${GPU_CHECK_TESTS:-}
}

export PY WHEELHOUSE OUT
export -f find_sanitizer install_test_tools environment build import_check sanitize tests

echo "gpu_check: out=$OUT python=$PY budget=${BUDGET}s"
run_step environment 60 environment
run_step test_tools 90 install_test_tools
if [[ ${SKIP_BUILD:-0} == 1 ]]; then
  record build skipped_by_request - 0 -
else
  run_step build 300 build
fi
run_step import_check 60 import_check
run_step tests 200 tests
# Whether this machine's compiler and libstdc++ let a C++ error message carry a number (they did
# not on the first GPU machine: benchmarks/gpu_toolchain_probe.py says what it builds).
run_step toolchain 120 "$PY" benchmarks/gpu_toolchain_probe.py
run_step smoke 60 "$PY" benchmarks/gpu_smoke.py --device cuda
run_step memcheck 120 sanitize memcheck
run_step racecheck 120 sanitize racecheck
run_step synccheck 90 sanitize synccheck
for suite in ${GPU_CHECK_SUITES:-sparta nlm cifs pgd attacks train}; do
  # shellcheck disable=SC2086  # GPU_CHECK_BENCH_ARGS is a list of arguments
  run_step "bench_$suite" 240 "$PY" -m benchmarks.run "$suite" --device cuda --out "$OUT" \
    --min-run-time 0.1 --rounds 3 ${GPU_CHECK_BENCH_ARGS:-}
done

# The report step is not counted in the budget check (REPORT_RESERVE is kept for it).
if ! timeout 60 "$PY" benchmarks/gpu_report.py --out "$OUT" --steps "$STEPS"; then
  echo "gpu_report.py failed"
  FAILED=1
fi
echo "gpu_check: $([[ $FAILED == 0 ]] && echo PASSED || echo FAILED) in ${SECONDS}s; report: $OUT/gpu_check.json"
exit "$FAILED"
