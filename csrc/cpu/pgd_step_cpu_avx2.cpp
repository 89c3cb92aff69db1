// AVX2 + FMA (Haswell / Zen 1 and later) build of the CPU kernels, selected at run time
// when the CPU supports it. Only this file's functions carry the target; system headers
// are included before the pragma and all inline code lives in namespaces unique to this
// file, so nothing compiled for avx2 can leak into code that runs on other CPUs.
#include <stdint.h>
#include <string.h>

#include "cpu/pgd_step_cpu.h"

#if RRM_FAST_X86_ISA_TABLES

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi,bmi2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2", "prefer-vector-width=256")
#endif

#define RRM_FAST_MATH_NAMESPACE math_avx2
#define RRM_FAST_CPU_KERNELS_NAMESPACE kernels_avx2_impl
#include "cpu/pgd_step_cpu_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

RRM_FAST_DEFINE_CPU_KERNEL_TABLE("avx2", kernels_avx2)

#endif  // RRM_FAST_X86_ISA_TABLES
