// Portable build of the CPU kernels (the compiler's baseline instruction set, SSE2 on
// x86-64). Used where the CPU has neither AVX2 nor AVX-512, or when asked for.
#include "cpu/pgd_step_cpu.h"

#define RRM_FAST_MATH_NAMESPACE math_default
#define RRM_FAST_CPU_KERNELS_NAMESPACE kernels_default_impl
#include "cpu/pgd_step_cpu_kernels.h"

RRM_FAST_DEFINE_CPU_KERNEL_TABLE("default", kernels_default)
