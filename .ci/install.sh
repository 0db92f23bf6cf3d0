#!/usr/bin/env bash
# Sets up a fresh machine: creates .venv (if absent), installs torch 2.14.1 and builds
# fastrobust in place with its run-time dependencies; with --test, the test dependencies too
# (the test extra: pytest, hypothesis, mkdocs, tensorboard, torchvision, ...).
#   bash .ci/install.sh [--test]
#
# Only what the machine can use is built by default: the CPU kernels always; the CUDA sources
# when a GPU is visible (nvidia-smi lists one) or FORCE_CUDA=1 (which fails the build without
# nvcc; FORCE_CUDA=0 skips them); the CUDA device code for the CPU emulator only with
# FR_EMULATE_CUDA=1 (the test command sets both, so that the tests run the CUDA kernels'
# logic on machines without a GPU). ccache, when installed, caches the compilations.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
case "${1:-}" in
  "") ;;
  --test) extras="[test]" ;;
  *) echo "install.sh: unknown option '$1' (the only one is --test)" >&2; exit 2 ;;
esac

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
pip install -q --disable-pip-version-check "torch==2.14.1" ninja "setuptools>=64" wheel

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ -z "${FORCE_CUDA:-}" ]; then
  if [ -x "$CUDA_HOME/bin/nvcc" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    export FORCE_CUDA=1
  else
    export FORCE_CUDA=0
  fi
fi
if [ "${FORCE_CUDA:-0}" = 1 ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  # torch's CUDA headers include cusparse.h, which pip's CUDA wheels keep here.
  site=$(python -c 'import site; print(site.getsitepackages()[0])')
  export CPLUS_INCLUDE_PATH="$site/nvidia/cu13/include${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}"
fi
export FR_EMULATE_CUDA=${FR_EMULATE_CUDA:-0}
export MAX_JOBS=${MAX_JOBS:-2}
if command -v ccache >/dev/null 2>&1; then
  export CXX="ccache ${CXX:-c++}"
  [ "$FORCE_CUDA" = 1 ] && export PYTORCH_NVCC=${PYTORCH_NVCC:-"ccache $CUDA_HOME/bin/nvcc"}
fi
pip install -q --disable-pip-version-check --no-build-isolation -e ".$extras"
python -m fastrobust.info
