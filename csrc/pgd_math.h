// Per-element math of the PGD step ops, shared by the CPU and the CUDA kernels.
//
// This header includes no torch header on purpose: the CUDA kernel file (.cu) must
// compile with nvcc alone (compiler + cudart) on machines whose torch has no CUDA
// headers, and the CPU kernel files are compiled once per instruction set, which is
// only safe when they pull in no shared inline code from torch.
//
// The semantics are those of rrm_fast/ops/pgd_reference.py, including its operation
// order (clamp to the eps ball with min-then-max, box clip with max-then-min) and its
// NaN behaviour (torch.sign(NaN) = 0; torch.minimum/maximum/clamp propagate NaN).
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define RRM_HD __host__ __device__ __forceinline__
#else
#define RRM_HD inline
#endif

// The CPU kernels are compiled once per instruction set; each compilation renames this
// namespace (RRM_FAST_MATH_NAMESPACE) so that no inline function compiled for AVX-512 can
// be merged by the linker into the portable build (which would fault on older CPUs).
#ifndef RRM_FAST_MATH_NAMESPACE
#define RRM_FAST_MATH_NAMESPACE math
#endif

namespace rrm_fast {
namespace RRM_FAST_MATH_NAMESPACE {

// Storage kinds of the gradient tensor; the kernels read all of them as float.
enum GradKind : int { kGradFloat = 0, kGradHalf = 1, kGradBFloat16 = 2 };

RRM_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

RRM_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  memcpy(&bits, &f, sizeof(bits));
  return bits;
#endif
}

// IEEE binary16 -> binary32, exact for every input (normals, subnormals, inf, NaN).
// Branch-free integer/float arithmetic (after Maratea's FP16 library) so that the CPU
// loops vectorise without F16C and the same code serves the device.
RRM_HD float half_bits_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const uint32_t exp_offset = 0xE0u << 23;
  const float exp_scale = 0x1.0p-112f;
  const float normalized = bits_to_float((two_w >> 4) + exp_offset) * exp_scale;
  const uint32_t magic_mask = 126u << 23;
  const float magic_bias = 0.5f;
  const float denormalized = bits_to_float((two_w >> 17) | magic_mask) - magic_bias;
  const uint32_t denormalized_cutoff = 1u << 27;
  // Select with a bit mask rather than ?: so that SSE/AVX2 loops vectorise too.
  const uint32_t use_denormalized = 0u - static_cast<uint32_t>(two_w < denormalized_cutoff);
  const uint32_t result = sign | (float_to_bits(denormalized) & use_denormalized) |
                          (float_to_bits(normalized) & ~use_denormalized);
  return bits_to_float(result);
}

// bfloat16 is the upper half of a float32.
RRM_HD float bfloat16_bits_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

// Storage type of each gradient kind and its conversion to float.
template <int kKind>
struct GradStorage;
template <>
struct GradStorage<kGradFloat> {
  using type = float;
  static RRM_HD float to_float(float v) { return v; }
};
template <>
struct GradStorage<kGradHalf> {
  using type = uint16_t;
  static RRM_HD float to_float(uint16_t v) { return half_bits_to_float(v); }
};
template <>
struct GradStorage<kGradBFloat16> {
  using type = uint16_t;
  static RRM_HD float to_float(uint16_t v) { return bfloat16_bits_to_float(v); }
};

// torch.sign: -1, 0, +1, and 0 for NaN. Written as torch does, (0 < g) - (g < 0), without a
// branch: a branch on the sign of a random gradient is mispredicted half the time and
// keeps the compiler from vectorising the loop.
RRM_HD float sign(float g) { return static_cast<float>(g > 0.f) - static_cast<float>(g < 0.f); }

// torch.minimum / torch.maximum against a bound: a NaN value propagates.
RRM_HD float min_nan(float v, float bound) { return v > bound ? bound : v; }
RRM_HD float max_nan(float v, float bound) { return v < bound ? bound : v; }

// delta <- clip(x + delta, lo, hi) - x  (max first, then min, as the reference).
RRM_HD float clip_to_box(float delta, float x, float lo, float hi) {
  return min_nan(max_nan(x + delta, lo), hi) - x;
}

// L-inf step: clip(delta + alpha*sign(g), -eps, eps), then the box clip.
RRM_HD float linf_step(float delta, float g, float x, float eps, float alpha, float lo, float hi) {
  const float stepped = delta + alpha * sign(g);
  return clip_to_box(max_nan(min_nan(stepped, eps), -eps), x, lo, hi);
}

// Uniform start in the L-inf ball from u ~ U[0, 1): (2u - 1) * eps, then the box clip.
RRM_HD float linf_init_from_uniform(float u, float x, float eps, float lo, float hi) {
  return clip_to_box((2.f * u - 1.f) * eps, x, lo, hi);
}

RRM_HD float sqrt_ieee(float v) {
#if defined(__CUDA_ARCH__)
  return sqrtf(v);  // correctly rounded unless --use_fast_math, which the build does not use
#else
  return __builtin_sqrtf(v);
#endif
}

// Per-sample factor of the L2 step: alpha / ||g|| when ||g|| > 0, else 0 (a zero or NaN
// norm leaves delta where it is, as the reference's `where(gnorm > 0, ...)`).
RRM_HD float l2_step_scale(float grad_sq_sum, float alpha) {
  const float norm = sqrt_ieee(grad_sq_sum);
  return norm > 0.f ? alpha / norm : 0.f;
}

// Per-sample factor of the projection onto ||delta|| <= eps.
RRM_HD float l2_projection_scale(float delta_sq_sum, float eps) {
  const float norm = sqrt_ieee(delta_sq_sum);
  return norm > eps ? eps / norm : 1.f;
}

// A zero scale means "no step" (also for NaN entries of g, as the reference's where()).
RRM_HD float l2_stepped(float delta, float g, float step_scale) {
  return step_scale != 0.f ? delta + step_scale * g : delta;
}

// Final L2 write: step, project, box clip.
RRM_HD float l2_step(float delta, float g, float x, float step_scale, float projection, float lo, float hi) {
  return clip_to_box(l2_stepped(delta, g, step_scale) * projection, x, lo, hi);
}

// Per-sample factor of the uniform L2-ball start: radius * eps / ||n|| for the normal
// draw n (0 when ||n|| = 0, as the reference divides by clamp_min(||n||, 1e-30)).
RRM_HD float l2_init_scale(float normal_sq_sum, float radius, float eps) {
  const float norm = sqrt_ieee(normal_sq_sum);
  return norm > 0.f ? radius * eps / norm : 0.f;
}

}  // namespace RRM_FAST_MATH_NAMESPACE
}  // namespace rrm_fast
