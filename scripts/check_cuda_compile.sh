#!/usr/bin/env bash
# Compile rrm_fast's CUDA code without a GPU or a CUDA build of torch, so that CI catches
# CUDA compile errors on CPU-only machines (nvcc must be installed).
#
#  1. csrc/cuda/pgd_step_cuda_kernels.cu, which includes no torch header, with nvcc for
#     each architecture in RRM_FAST_CHECK_ARCHS (default "80 90"; "none" skips step 1),
#     warnings as errors and the flags setup.py uses (--fmad=false, no fast math).
#  2. The torch-facing binding csrc/cuda/pgd_step_cuda_binding.cpp: a syntax check with the
#     host compiler against the installed torch's headers and nvcc's CUDA headers. A CPU
#     wheel of torch lacks one CMake-generated header, c10/cuda/impl/cuda_cmake_macros.h;
#     a stand-in that defines its one macro (C10_CUDA_BUILD_SHARED_LIBS, as torch's shared
#     CUDA builds do) is put on the include path then. RRM_FAST_CHECK_BINDING=0 skips step 2.
#
# Usage: bash scripts/check_cuda_compile.sh        (exit status 0: everything compiled)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "${NVCC}" ]]; then
  echo "check_cuda_compile: nvcc not found; install the CUDA toolkit or set NVCC=/path/to/nvcc" >&2
  exit 1
fi
ARCHS="${RRM_FAST_CHECK_ARCHS:-80 90}"
[[ "${ARCHS}" == "none" ]] && ARCHS=""
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

echo "check_cuda_compile: $("${NVCC}" --version | tail -n 1)"
for arch in ${ARCHS}; do
  "${NVCC}" -std=c++17 -O3 --fmad=false -DNDEBUG -arch="sm_${arch}" -I"${ROOT}/csrc" \
    -Xcompiler -Wall -Werror all-warnings \
    -c "${ROOT}/csrc/cuda/pgd_step_cuda_kernels.cu" -o "${WORK}/pgd_step_cuda_kernels_sm${arch}.o"
  echo "check_cuda_compile: pgd_step_cuda_kernels.cu compiles for sm_${arch}"
done

if [[ "${RRM_FAST_CHECK_BINDING:-1}" == "0" ]]; then
  echo "check_cuda_compile: binding check skipped (RRM_FAST_CHECK_BINDING=0)"
  exit 0
fi
read -r TORCH_INCLUDE PYTHON_INCLUDE < <("${PYTHON}" -c \
  "import os, sysconfig, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'), sysconfig.get_paths()['include'])")
CUDA_INCLUDE="$(cd "$(dirname "${NVCC}")/.." && pwd)/include"
[[ -f "${CUDA_INCLUDE}/cuda_runtime_api.h" ]] || CUDA_INCLUDE="${CUDA_HOME:-/usr/local/cuda}/include"
STAND_IN=()
if [[ ! -f "${TORCH_INCLUDE}/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
  mkdir -p "${WORK}/include/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "${WORK}/include/c10/cuda/impl/cuda_cmake_macros.h"
  STAND_IN=(-isystem "${WORK}/include")
  echo "check_cuda_compile: this torch has no CUDA build headers; using a stand-in cuda_cmake_macros.h"
fi
# -isystem: warnings inside torch's, CUDA's and Python's headers are not ours to fail on.
"${CXX:-c++}" -std=c++20 -fsyntax-only -Wall -Werror -I"${ROOT}/csrc" "${STAND_IN[@]}" \
  -isystem "${TORCH_INCLUDE}" -isystem "${TORCH_INCLUDE}/torch/csrc/api/include" -isystem "${CUDA_INCLUDE}" \
  -isystem "${PYTHON_INCLUDE}" \
  "${ROOT}/csrc/cuda/pgd_step_cuda_binding.cpp"
echo "check_cuda_compile: pgd_step_cuda_binding.cpp passes the syntax check"
