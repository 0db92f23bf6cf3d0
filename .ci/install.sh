#!/usr/bin/env bash
# Sets up a fresh machine: creates .venv (if absent), installs torch 2.14.1 and the test
# dependencies, and builds fastrobust in place.
#
# The CUDA sources are compiled whenever nvcc is found (FORCE_CUDA=1 fails the build when
# it is not; FORCE_CUDA=0 skips them), and the CUDA device code is also compiled for the
# CPU emulator (FR_EMULATE_CUDA=1), so that the tests run it on machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
pip install -q --disable-pip-version-check "torch==2.14.1" ninja "setuptools>=64" wheel

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ -z "${FORCE_CUDA:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
  export FORCE_CUDA=1
fi
if [ "${FORCE_CUDA:-0}" = 1 ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  # torch's CUDA headers include cusparse.h, which pip's CUDA wheels keep here.
  site=$(python -c 'import site; print(site.getsitepackages()[0])')
  export CPLUS_INCLUDE_PATH="$site/nvidia/cu13/include${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}"
fi
export FR_EMULATE_CUDA=${FR_EMULATE_CUDA:-1}
export MAX_JOBS=${MAX_JOBS:-2}
pip install -q --disable-pip-version-check --no-build-isolation -e ".[test]"
python -m fastrobust.info
