#!/usr/bin/env bash
# Compile rrm_fast's CUDA kernels without a GPU or a CUDA build of torch, warnings as errors,
# so that CI catches CUDA compile errors on CPU-only machines (nvcc must be installed):
# csrc/cuda/pgd_step_cuda_kernels.cu, which includes no torch header, with nvcc for each
# architecture in RRM_FAST_CHECK_ARCHS (default "80 90"), -Werror and the flags setup.py uses
# (--fmad=false, no fast math). The whole extension (the torch-facing binding too) is built and
# linked against torch's CUDA wheel by scripts/check_cuda_build.py.
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
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

echo "check_cuda_compile: $("${NVCC}" --version | tail -n 1)"
for arch in ${ARCHS}; do
  "${NVCC}" -std=c++17 -O3 --fmad=false -DNDEBUG -arch="sm_${arch}" -I"${ROOT}/csrc" \
    -Xcompiler -Wall -Werror all-warnings \
    -c "${ROOT}/csrc/cuda/pgd_step_cuda_kernels.cu" -o "${WORK}/pgd_step_cuda_kernels_sm${arch}.o"
  echo "check_cuda_compile: pgd_step_cuda_kernels.cu compiles for sm_${arch}"
done
