// CUDA kernels of the PGD step ops. Torch-free on purpose (see pgd_step_cuda.h): nvcc
// compiles this file with only its own headers, so CI catches CUDA compile errors on
// machines whose torch has no CUDA.
//
// * Elementwise ops (L-inf step, L-inf start): grid-stride loops over 16-byte vectors of
//   four floats (8-byte loads for a float16/bfloat16 gradient) where the pointers allow,
//   else over single elements; one read of delta, grad and x and one write of delta.
// * Per-sample ops (L2 step, L2 start): one block per sample, which sums squares with a
//   warp-shuffle + shared-memory block reduction (a fixed order, so results do not vary
//   between runs) and reads the sample again from L2 cache for the next passes.
// The per-element math is pgd_math.h, shared with the CPU kernels.
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/pgd_step_cuda.h"
#include "pgd_layout.h"
#include "pgd_math.h"

namespace rrm_fast {
namespace cuda {
namespace {

constexpr int kElementwiseThreads = 256;
constexpr int kElementwiseBlocksPerMultiprocessor = 8;  // 2048 resident threads per SM
constexpr int kSampleThreads = 512;
constexpr int kWarp = 32;

template <int kGrad>
using GradT = typename math::GradStorage<kGrad>::type;

// ---------------------------------------------------------------------------------------
// Loads and stores of kWidth consecutive elements (kWidth = 4: one vector access)
// ---------------------------------------------------------------------------------------

template <int kWidth>
__device__ __forceinline__ void load_floats(const float* __restrict__ p, int64_t vector, float (&out)[kWidth]) {
  if constexpr (kWidth == 4) {
    const float4 v = reinterpret_cast<const float4*>(p)[vector];
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
  } else {
    out[0] = p[vector];
  }
}

template <int kWidth>
__device__ __forceinline__ void store_floats(float* __restrict__ p, int64_t vector, const float (&in)[kWidth]) {
  if constexpr (kWidth == 4) {
    reinterpret_cast<float4*>(p)[vector] = make_float4(in[0], in[1], in[2], in[3]);
  } else {
    p[vector] = in[0];
  }
}

template <int kGrad, int kWidth>
__device__ __forceinline__ void load_grad(const GradT<kGrad>* __restrict__ p, int64_t vector, float (&out)[kWidth]) {
  using Storage = math::GradStorage<kGrad>;
  if constexpr (kWidth == 4 && kGrad == math::kGradFloat) {
    load_floats<4>(p, vector, out);
  } else if constexpr (kWidth == 4) {
    // Four 16-bit values in one 8-byte load; element 0 is the low half of .x (little endian).
    const uint2 v = reinterpret_cast<const uint2*>(p)[vector];
    out[0] = Storage::to_float(static_cast<uint16_t>(v.x & 0xFFFFu));
    out[1] = Storage::to_float(static_cast<uint16_t>(v.x >> 16));
    out[2] = Storage::to_float(static_cast<uint16_t>(v.y & 0xFFFFu));
    out[3] = Storage::to_float(static_cast<uint16_t>(v.y >> 16));
  } else {
    out[0] = Storage::to_float(p[vector]);
  }
}

// ---------------------------------------------------------------------------------------
// Parameters and element positions
// ---------------------------------------------------------------------------------------

// kRows parameters per channel: the scalars, or rows of `channels` floats in device memory.
template <int kRows>
struct ParamSource {
  const float* rows;
  int channels;
  float scalar[kRows];

  __device__ __forceinline__ float get(int row, int channel) const {
    return rows != nullptr ? __ldg(rows + row * channels + channel) : scalar[row];
  }
};

// Sample and parameter channel of consecutive elements, advanced one element at a time
// (one 64-bit division per vector instead of one per element). Inactive when neither a
// mask nor channel rows need them.
struct Cursor {
  int64_t sample = 0;
  int within = 0;  // offset inside the sample
  int channel = 0;
  int sample_size, inner, channels;
  bool active;

  __device__ __forceinline__ Cursor(const PgdLayout& layout, int64_t index, bool needed)
      : sample_size(static_cast<int>(layout.sample_size)),
        inner(static_cast<int>(layout.inner)),
        channels(static_cast<int>(layout.channels)),
        active(needed) {
    if (!active) return;
    sample = index / layout.sample_size;
    within = static_cast<int>(index - sample * layout.sample_size);
    channel = channel_of(within);
  }

  __device__ __forceinline__ int channel_of(int offset) const {
    return static_cast<int>((static_cast<unsigned>(offset) / static_cast<unsigned>(inner)) %
                            static_cast<unsigned>(channels));
  }

  __device__ __forceinline__ void next() {
    if (!active) return;
    if (++within == sample_size) {
      within = 0;
      ++sample;
    }
    channel = channel_of(within);
  }
};

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Sum over the block, returned to every thread; blockDim.x must be a multiple of 32.
__device__ __forceinline__ float block_sum(float value, float* partials) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (lane == 0) partials[warp] = value;
  __syncthreads();
  value = lane < static_cast<int>(blockDim.x / kWarp) ? partials[lane] : 0.f;
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
  __syncthreads();  // partials may be rewritten by the next call only after every warp read them
  return value;
}

// ---------------------------------------------------------------------------------------
// Elementwise kernels
// ---------------------------------------------------------------------------------------

template <int kGrad, int kWidth>
__device__ __forceinline__ void linf_step_vector(float* __restrict__ delta, const GradT<kGrad>* __restrict__ grad,
                                                 const float* __restrict__ x, const bool* __restrict__ mask,
                                                 const PgdLayout& layout, const ParamSource<kLinfStepParams>& params,
                                                 int64_t vector) {
  float d[kWidth], g[kWidth], xv[kWidth];
  load_floats<kWidth>(delta, vector, d);
  load_grad<kGrad, kWidth>(grad, vector, g);
  load_floats<kWidth>(x, vector, xv);
  Cursor at(layout, vector * kWidth, mask != nullptr || params.rows != nullptr);
#pragma unroll
  for (int k = 0; k < kWidth; ++k) {
    if (mask == nullptr || mask[at.sample]) {
      const int c = at.channel;
      d[k] = math::linf_step(d[k], g[k], xv[k], params.get(kLinfEps, c), params.get(kLinfAlpha, c),
                             params.get(kLinfLo, c), params.get(kLinfHi, c));
    }
    at.next();
  }
  store_floats<kWidth>(delta, vector, d);
}

template <int kGrad, int kWidth>
__global__ void __launch_bounds__(kElementwiseThreads)
    linf_step_kernel(float* __restrict__ delta, const GradT<kGrad>* __restrict__ grad, const float* __restrict__ x,
                     const bool* __restrict__ mask, PgdLayout layout, ParamSource<kLinfStepParams> params,
                     int64_t numel) {
  const int64_t vectors = numel / kWidth;
  for (int64_t v = global_thread(); v < vectors; v += grid_threads())
    linf_step_vector<kGrad, kWidth>(delta, grad, x, mask, layout, params, v);
  // The last numel % kWidth elements, one per thread.
  const int64_t tail = vectors * kWidth + global_thread();
  if (kWidth > 1 && tail < numel) linf_step_vector<kGrad, 1>(delta, grad, x, mask, layout, params, tail);
}

__device__ __forceinline__ void linf_init_vector1(float* __restrict__ delta, const float* __restrict__ x,
                                                  const PgdLayout& layout,
                                                  const ParamSource<kLinfInitParams>& params, int64_t index) {
  const Cursor at(layout, index, params.rows != nullptr);
  const int c = at.channel;
  delta[index] = math::linf_init_from_uniform(delta[index], x[index], params.get(kInitEps, c),
                                              params.get(kInitLo, c), params.get(kInitHi, c));
}

template <int kWidth>
__global__ void __launch_bounds__(kElementwiseThreads)
    linf_init_kernel(float* __restrict__ delta, const float* __restrict__ x, PgdLayout layout,
                     ParamSource<kLinfInitParams> params, int64_t numel) {
  const int64_t vectors = numel / kWidth;
  for (int64_t v = global_thread(); v < vectors; v += grid_threads()) {
    float u[kWidth], xv[kWidth];
    load_floats<kWidth>(delta, v, u);
    load_floats<kWidth>(x, v, xv);
    Cursor at(layout, v * kWidth, params.rows != nullptr);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      const int c = at.channel;
      u[k] = math::linf_init_from_uniform(u[k], xv[k], params.get(kInitEps, c), params.get(kInitLo, c),
                                          params.get(kInitHi, c));
      at.next();
    }
    store_floats<kWidth>(delta, v, u);
  }
  const int64_t tail = vectors * kWidth + global_thread();
  if (kWidth > 1 && tail < numel) linf_init_vector1(delta, x, layout, params, tail);
}

// ---------------------------------------------------------------------------------------
// Per-sample kernels: blockIdx.x is the sample
// ---------------------------------------------------------------------------------------

template <int kGrad, int kWidth>
__global__ void __launch_bounds__(kSampleThreads)
    l2_step_kernel(float* __restrict__ delta, const GradT<kGrad>* __restrict__ grad, const float* __restrict__ x,
                   const bool* __restrict__ mask, PgdLayout layout, ParamSource<kBoxParams> box, float eps,
                   float alpha) {
  __shared__ float partials[kSampleThreads / kWarp];
  const int64_t sample = blockIdx.x;
  if (mask != nullptr && !mask[sample]) return;  // uniform over the block: no barrier is skipped by half of it
  const int64_t base = sample * layout.sample_size;
  float* __restrict__ d = delta + base;
  const GradT<kGrad>* __restrict__ g = grad + base;
  const float* __restrict__ xs = x + base;
  const int vectors = static_cast<int>(layout.sample_size / kWidth);  // the launcher picks kWidth | sample_size

  float acc = 0.f;
  for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
    float gv[kWidth];
    load_grad<kGrad, kWidth>(g, v, gv);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) acc += gv[k] * gv[k];
  }
  const float step_scale = math::l2_step_scale(block_sum(acc, partials), alpha);

  acc = 0.f;
  for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
    float dv[kWidth], gv[kWidth];
    load_floats<kWidth>(d, v, dv);
    load_grad<kGrad, kWidth>(g, v, gv);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      const float stepped = math::l2_stepped(dv[k], gv[k], step_scale);
      acc += stepped * stepped;
    }
  }
  const float projection = math::l2_projection_scale(block_sum(acc, partials), eps);

  const Cursor shape(layout, 0, false);
  for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
    float dv[kWidth], gv[kWidth], xv[kWidth];
    load_floats<kWidth>(d, v, dv);
    load_grad<kGrad, kWidth>(g, v, gv);
    load_floats<kWidth>(xs, v, xv);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      const int c = box.rows != nullptr ? shape.channel_of(v * kWidth + k) : 0;
      dv[k] = math::l2_step(dv[k], gv[k], xv[k], step_scale, projection, box.get(kBoxLo, c), box.get(kBoxHi, c));
    }
    store_floats<kWidth>(d, v, dv);
  }
}

template <int kWidth>
__global__ void __launch_bounds__(kSampleThreads)
    l2_init_kernel(float* __restrict__ delta, const float* __restrict__ x, const float* __restrict__ radius,
                   PgdLayout layout, ParamSource<kBoxParams> box, float eps) {
  __shared__ float partials[kSampleThreads / kWarp];
  const int64_t sample = blockIdx.x;
  const int64_t base = sample * layout.sample_size;
  float* __restrict__ d = delta + base;
  const float* __restrict__ xs = x + base;
  const int vectors = static_cast<int>(layout.sample_size / kWidth);

  float acc = 0.f;
  for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
    float dv[kWidth];
    load_floats<kWidth>(d, v, dv);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) acc += dv[k] * dv[k];
  }
  const float scale = math::l2_init_scale(block_sum(acc, partials), radius[sample], eps);

  const Cursor shape(layout, 0, false);
  for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
    float dv[kWidth], xv[kWidth];
    load_floats<kWidth>(d, v, dv);
    load_floats<kWidth>(xs, v, xv);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      const int c = box.rows != nullptr ? shape.channel_of(v * kWidth + k) : 0;
      dv[k] = math::clip_to_box(dv[k] * scale, xv[k], box.get(kBoxLo, c), box.get(kBoxHi, c));
    }
    store_floats<kWidth>(d, v, dv);
  }
}

// ---------------------------------------------------------------------------------------
// Launch helpers
// ---------------------------------------------------------------------------------------

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

int elementwise_blocks(int64_t work, int multiprocessors) {
  const int64_t wanted = (work + kElementwiseThreads - 1) / kElementwiseThreads;
  const int64_t cap = static_cast<int64_t>(multiprocessors > 0 ? multiprocessors : 1) * kElementwiseBlocksPerMultiprocessor;
  return static_cast<int>(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
}

template <int kRows>
ParamSource<kRows> param_source(const float* rows, int64_t channels, const float (&scalars)[kRows]) {
  ParamSource<kRows> source;
  source.rows = rows;
  source.channels = static_cast<int>(channels);
  for (int r = 0; r < kRows; ++r) source.scalar[r] = scalars[r];
  return source;
}

template <int kGrad>
cudaError_t launch_linf_step(float* delta, const void* grad_raw, const float* x, const bool* mask,
                             const PgdLayout& layout, const ParamSource<kLinfStepParams>& params, int multiprocessors,
                             cudaStream_t stream) {
  const auto* grad = static_cast<const GradT<kGrad>*>(grad_raw);
  const int64_t numel = layout.samples * layout.sample_size;
  const bool vectorised = aligned(delta, 16) && aligned(x, 16) && aligned(grad, 4 * sizeof(GradT<kGrad>));
  if (vectorised) {
    linf_step_kernel<kGrad, 4><<<elementwise_blocks(numel / 4, multiprocessors), kElementwiseThreads, 0, stream>>>(
        delta, grad, x, mask, layout, params, numel);
  } else {
    linf_step_kernel<kGrad, 1><<<elementwise_blocks(numel, multiprocessors), kElementwiseThreads, 0, stream>>>(
        delta, grad, x, mask, layout, params, numel);
  }
  return cudaGetLastError();
}

template <int kGrad>
cudaError_t launch_l2_step(float* delta, const void* grad_raw, const float* x, const bool* mask,
                           const PgdLayout& layout, const ParamSource<kBoxParams>& box, float eps, float alpha,
                           cudaStream_t stream) {
  const auto* grad = static_cast<const GradT<kGrad>*>(grad_raw);
  const bool vectorised = layout.sample_size % 4 == 0 && aligned(delta, 16) && aligned(x, 16) &&
                          aligned(grad, 4 * sizeof(GradT<kGrad>));
  const dim3 grid(static_cast<unsigned>(layout.samples));
  if (vectorised) {
    l2_step_kernel<kGrad, 4><<<grid, kSampleThreads, 0, stream>>>(delta, grad, x, mask, layout, box, eps, alpha);
  } else {
    l2_step_kernel<kGrad, 1><<<grid, kSampleThreads, 0, stream>>>(delta, grad, x, mask, layout, box, eps, alpha);
  }
  return cudaGetLastError();
}

bool launchable(const PgdLayout& layout) {
  return layout.samples > 0 && layout.sample_size > 0 && layout.sample_size <= kMaxSampleSize;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Launchers (pgd_step_cuda.h)
// ---------------------------------------------------------------------------------------

cudaError_t linf_step(float* delta, const void* grad, int grad_kind, const float* x, const bool* mask,
                      const PgdLayout& layout, const float* channel_rows, float eps, float alpha, float lo, float hi,
                      int multiprocessors, cudaStream_t stream) {
  if (layout.samples == 0 || layout.sample_size == 0) return cudaSuccess;
  if (!launchable(layout)) return cudaErrorInvalidValue;
  const float scalars[kLinfStepParams] = {eps, alpha, lo, hi};
  const auto params = param_source<kLinfStepParams>(channel_rows, layout.channels, scalars);
  switch (grad_kind) {
    case math::kGradFloat:
      return launch_linf_step<math::kGradFloat>(delta, grad, x, mask, layout, params, multiprocessors, stream);
    case math::kGradHalf:
      return launch_linf_step<math::kGradHalf>(delta, grad, x, mask, layout, params, multiprocessors, stream);
    case math::kGradBFloat16:
      return launch_linf_step<math::kGradBFloat16>(delta, grad, x, mask, layout, params, multiprocessors, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t l2_step(float* delta, const void* grad, int grad_kind, const float* x, const bool* mask,
                    const PgdLayout& layout, const float* channel_box, float eps, float alpha, float lo, float hi,
                    cudaStream_t stream) {
  if (layout.samples == 0 || layout.sample_size == 0) return cudaSuccess;
  if (!launchable(layout) || layout.samples > 0x7FFFFFFF) return cudaErrorInvalidValue;
  const float scalars[kBoxParams] = {lo, hi};
  const auto box = param_source<kBoxParams>(channel_box, layout.channels, scalars);
  switch (grad_kind) {
    case math::kGradFloat:
      return launch_l2_step<math::kGradFloat>(delta, grad, x, mask, layout, box, eps, alpha, stream);
    case math::kGradHalf:
      return launch_l2_step<math::kGradHalf>(delta, grad, x, mask, layout, box, eps, alpha, stream);
    case math::kGradBFloat16:
      return launch_l2_step<math::kGradBFloat16>(delta, grad, x, mask, layout, box, eps, alpha, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t linf_init_from_uniform(float* delta, const float* x, const PgdLayout& layout, const float* channel_rows,
                                   float eps, float lo, float hi, int multiprocessors, cudaStream_t stream) {
  if (layout.samples == 0 || layout.sample_size == 0) return cudaSuccess;
  if (!launchable(layout)) return cudaErrorInvalidValue;
  const float scalars[kLinfInitParams] = {eps, lo, hi};
  const auto params = param_source<kLinfInitParams>(channel_rows, layout.channels, scalars);
  const int64_t numel = layout.samples * layout.sample_size;
  if (aligned(delta, 16) && aligned(x, 16)) {
    linf_init_kernel<4><<<elementwise_blocks(numel / 4, multiprocessors), kElementwiseThreads, 0, stream>>>(
        delta, x, layout, params, numel);
  } else {
    linf_init_kernel<1><<<elementwise_blocks(numel, multiprocessors), kElementwiseThreads, 0, stream>>>(
        delta, x, layout, params, numel);
  }
  return cudaGetLastError();
}

cudaError_t l2_init_from_normal(float* delta, const float* x, const float* radius, const PgdLayout& layout,
                                const float* channel_box, float eps, float lo, float hi, cudaStream_t stream) {
  if (layout.samples == 0 || layout.sample_size == 0) return cudaSuccess;
  if (!launchable(layout) || layout.samples > 0x7FFFFFFF) return cudaErrorInvalidValue;
  const float scalars[kBoxParams] = {lo, hi};
  const auto box = param_source<kBoxParams>(channel_box, layout.channels, scalars);
  const dim3 grid(static_cast<unsigned>(layout.samples));
  if (layout.sample_size % 4 == 0 && aligned(delta, 16) && aligned(x, 16)) {
    l2_init_kernel<4><<<grid, kSampleThreads, 0, stream>>>(delta, x, radius, layout, box, eps);
  } else {
    l2_init_kernel<1><<<grid, kSampleThreads, 0, stream>>>(delta, x, radius, layout, box, eps);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace rrm_fast
