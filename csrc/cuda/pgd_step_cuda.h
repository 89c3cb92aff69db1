// CUDA launchers of the PGD step ops (torch-free: raw device pointers, sizes and a stream).
//
// pgd_step_cuda_kernels.cu implements them and compiles with nvcc alone, so CI checks it on
// machines without CUDA torch (scripts/check_cuda_compile.sh); the torch-facing binding
// (pgd_step_cuda_binding.cpp) checks arguments and calls these.
//
// All pointers are device pointers into dense batches described by `layout`; `mask` is
// null or one bool per sample; `channel_rows` is null (use the scalars) or the parameter
// rows of pgd_layout.h, `layout.channels` floats each. Each launcher returns the launch
// status (cudaGetLastError()).
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "pgd_layout.h"

namespace rrm_fast {
namespace cuda {

// A sample's elements are indexed with 32-bit integers in the kernels.
constexpr int64_t kMaxSampleSize = (int64_t(1) << 31) - 1;

cudaError_t linf_step(float* delta, const void* grad, int grad_kind, const float* x, const bool* mask,
                      const PgdLayout& layout, const float* channel_rows, float eps, float alpha, float lo, float hi,
                      int multiprocessors, cudaStream_t stream);

cudaError_t l2_step(float* delta, const void* grad, int grad_kind, const float* x, const bool* mask,
                    const PgdLayout& layout, const float* channel_box, float eps, float alpha, float lo, float hi,
                    cudaStream_t stream);

cudaError_t linf_init_from_uniform(float* delta, const float* x, const PgdLayout& layout, const float* channel_rows,
                                   float eps, float lo, float hi, int multiprocessors, cudaStream_t stream);

cudaError_t l2_init_from_normal(float* delta, const float* x, const float* radius, const PgdLayout& layout,
                                const float* channel_box, float eps, float lo, float hi, cudaStream_t stream);

}  // namespace cuda
}  // namespace rrm_fast
