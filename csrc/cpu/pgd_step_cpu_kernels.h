// Bodies of the CPU kernels, compiled once per instruction set.
//
// Include this only from pgd_step_cpu_{default,avx2,avx512}.cpp, after defining
// RRM_FAST_MATH_NAMESPACE and RRM_FAST_CPU_KERNELS_NAMESPACE to names unique to that
// file (and, for the x86 variants, after `#pragma GCC target`). Every loop over a run of
// elements has unit stride, restrict pointers and `#pragma omp simd` (honoured with
// -fopenmp-simd), so the compiler emits vector code for the target instruction set;
// the sums of squares run in one fixed order on every instruction set.
#pragma once

#include "cpu/pgd_step_cpu.h"
#include "pgd_layout.h"
#include "pgd_math.h"

namespace rrm_fast {
namespace cpu {
namespace RRM_FAST_CPU_KERNELS_NAMESPACE {

namespace math = ::rrm_fast::RRM_FAST_MATH_NAMESPACE;

template <int kGrad>
using GradT = typename math::GradStorage<kGrad>::type;

// Walks the flat element range [begin, end) as runs of `layout.inner` elements that share
// one parameter channel, calling body(offset, length, channel) for every run whose
// sample is not masked out. Run boundaries fall on sample boundaries, so the sample and
// channel are tracked incrementally (no division per run).
template <typename Body>
inline void for_each_run(const PgdLayout& layout, const bool* mask, int64_t begin, int64_t end, Body body) {
  if (begin >= end) return;
  const int64_t inner = layout.inner;
  int64_t run = begin / inner;
  int64_t channel = run % layout.channels;
  int64_t sample = begin / layout.sample_size;
  int64_t sample_end = (sample + 1) * layout.sample_size;
  int64_t i = begin;
  while (i < end) {
    const int64_t run_end = (run + 1) * inner < end ? (run + 1) * inner : end;
    if (mask == nullptr || mask[sample]) body(i, run_end - i, channel);
    i = run_end;
    ++run;
    if (++channel == layout.channels) channel = 0;
    if (i >= sample_end) {
      ++sample;
      sample_end += layout.sample_size;
    }
  }
}

template <int kGrad>
void linf_step(float* delta, const void* grad, const float* x, const bool* mask, const PgdLayout& layout,
               const float* params, int64_t begin, int64_t end) {
  const GradT<kGrad>* g = static_cast<const GradT<kGrad>*>(grad);
  const int64_t stride = layout.channels;
  for_each_run(layout, mask, begin, end, [&](int64_t offset, int64_t length, int64_t c) {
    const float eps = params[kLinfEps * stride + c];
    const float alpha = params[kLinfAlpha * stride + c];
    const float lo = params[kLinfLo * stride + c];
    const float hi = params[kLinfHi * stride + c];
    float* __restrict__ d = delta + offset;
    const GradT<kGrad>* __restrict__ gr = g + offset;
    const float* __restrict__ xr = x + offset;
#pragma omp simd
    for (int64_t j = 0; j < length; ++j) {
      d[j] = math::linf_step(d[j], math::GradStorage<kGrad>::to_float(gr[j]), xr[j], eps, alpha, lo, hi);
    }
  });
}

void linf_init_from_uniform(float* delta, const float* x, const PgdLayout& layout, const float* params,
                            int64_t begin, int64_t end) {
  const int64_t stride = layout.channels;
  for_each_run(layout, nullptr, begin, end, [&](int64_t offset, int64_t length, int64_t c) {
    const float eps = params[kInitEps * stride + c];
    const float lo = params[kInitLo * stride + c];
    const float hi = params[kInitHi * stride + c];
    float* __restrict__ d = delta + offset;
    const float* __restrict__ xr = x + offset;
#pragma omp simd
    for (int64_t j = 0; j < length; ++j) d[j] = math::linf_init_from_uniform(d[j], xr[j], eps, lo, hi);
  });
}

// Sum of value(j)^2 over j < n in a fixed order that does not depend on the instruction
// set: kSumLanes interleaved partial sums (element j goes to partial j % kSumLanes), then
// those added in order. The independent partials also break the add-latency chain of a
// single accumulator (4 AVX-512 or 8 AVX2 registers of accumulators).
constexpr int kSumLanes = 64;

template <typename Value>
inline float sum_of_squares(int64_t n, Value value) {
  float partial[kSumLanes] = {};
  int64_t block = 0;
  for (; block + kSumLanes <= n; block += kSumLanes) {
#pragma omp simd
    for (int k = 0; k < kSumLanes; ++k) {
      const float v = value(block + k);
      partial[k] += v * v;
    }
  }
  for (int k = 0; block + k < n; ++k) {
    const float v = value(block + k);
    partial[k] += v * v;
  }
  float total = 0.f;
  for (int k = 0; k < kSumLanes; ++k) total += partial[k];
  return total;
}

// Box clip of a whole sample after scaling: d <- clip(x + scale * stepped(d), lo, hi) - x,
// run by run so that the per-channel bounds are loop invariants.
template <int kGrad>
void l2_step(float* delta, const void* grad, const float* x, const bool* mask, const PgdLayout& layout,
             const float* box, float eps, float alpha, int64_t begin, int64_t end) {
  const GradT<kGrad>* g_all = static_cast<const GradT<kGrad>*>(grad);
  const int64_t size = layout.sample_size;
  const int64_t stride = layout.channels;
  for (int64_t s = begin; s < end; ++s) {
    if (mask != nullptr && !mask[s]) continue;
    float* __restrict__ d = delta + s * size;
    const GradT<kGrad>* __restrict__ g = g_all + s * size;
    // Pass 1: ||g||^2. Pass 2: ||delta + scale * g||^2. Pass 3: write. A sample is at most a
    // few hundred KiB, so passes 2 and 3 read it from cache.
    const float step_scale = math::l2_step_scale(
        sum_of_squares(size, [&](int64_t j) { return math::GradStorage<kGrad>::to_float(g[j]); }), alpha);
    const float stepped_sq = sum_of_squares(size, [&](int64_t j) {
      return math::l2_stepped(d[j], math::GradStorage<kGrad>::to_float(g[j]), step_scale);
    });
    const float projection = math::l2_projection_scale(stepped_sq, eps);
    for_each_run(layout, nullptr, s * size, (s + 1) * size, [&](int64_t offset, int64_t length, int64_t c) {
      const float lo = box[kBoxLo * stride + c];
      const float hi = box[kBoxHi * stride + c];
      float* __restrict__ dr = delta + offset;
      const GradT<kGrad>* __restrict__ gr = g_all + offset;
      const float* __restrict__ xr = x + offset;
#pragma omp simd
      for (int64_t j = 0; j < length; ++j) {
        dr[j] = math::l2_step(dr[j], math::GradStorage<kGrad>::to_float(gr[j]), xr[j], step_scale, projection,
                              lo, hi);
      }
    });
  }
}

// delta holds N(0, 1) draws on entry; radius[s] = U^(1/sample_size) per sample.
void l2_init_from_normal(float* delta, const float* x, const float* radius, const PgdLayout& layout,
                         const float* box, float eps, int64_t begin, int64_t end) {
  const int64_t size = layout.sample_size;
  const int64_t stride = layout.channels;
  for (int64_t s = begin; s < end; ++s) {
    const float* __restrict__ normal = delta + s * size;
    const float scale =
        math::l2_init_scale(sum_of_squares(size, [&](int64_t j) { return normal[j]; }), radius[s], eps);
    for_each_run(layout, nullptr, s * size, (s + 1) * size, [&](int64_t offset, int64_t length, int64_t c) {
      const float lo = box[kBoxLo * stride + c];
      const float hi = box[kBoxHi * stride + c];
      float* __restrict__ dr = delta + offset;
      const float* __restrict__ xr = x + offset;
#pragma omp simd
      for (int64_t j = 0; j < length; ++j) dr[j] = math::clip_to_box(dr[j] * scale, xr[j], lo, hi);
    });
  }
}

}  // namespace RRM_FAST_CPU_KERNELS_NAMESPACE
}  // namespace cpu
}  // namespace rrm_fast

// The table of one instruction set; defined by each including file after its target
// pragma is popped, so that the table itself is plain data.
#define RRM_FAST_DEFINE_CPU_KERNEL_TABLE(ISA_NAME, GETTER)                                          \
  namespace rrm_fast {                                                                              \
  namespace cpu {                                                                                   \
  const KernelTable& GETTER() {                                                                     \
    namespace k = RRM_FAST_CPU_KERNELS_NAMESPACE;                                                   \
    static const KernelTable table = {                                                              \
        ISA_NAME,                                                                                   \
        {&k::linf_step<0>, &k::linf_step<1>, &k::linf_step<2>},                                     \
        {&k::l2_step<0>, &k::l2_step<1>, &k::l2_step<2>},                                           \
        &k::linf_init_from_uniform,                                                                 \
        &k::l2_init_from_normal,                                                                    \
    };                                                                                              \
    return table;                                                                                   \
  }                                                                                                 \
  }                                                                                                 \
  }
