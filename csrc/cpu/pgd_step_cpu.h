// CPU kernels of the PGD step ops: one table of entry points per instruction set.
//
// The kernel bodies (pgd_step_cpu_kernels.h) are compiled three times, by
// pgd_step_cpu_{default,avx2,avx512}.cpp, and the op picks a table at run time from what
// the CPU supports. Torch-free: parallelism (at::parallel_for) lives in the caller, which
// hands each thread a range of elements or samples.
#pragma once

#include <stdint.h>

#include "pgd_layout.h"

namespace rrm_fast {
namespace cpu {

// Elementwise ops work on the flat element range [begin, end) of the batch.
// Per-sample ops (L2) work on the sample range [begin, end).
// `mask` is null or one bool per sample (false: leave the sample untouched).
// `params` holds the parameter rows (see pgd_layout.h), `layout.channels` floats each.
using LinfStepFn = void (*)(float* delta, const void* grad, const float* x, const bool* mask,
                            const PgdLayout& layout, const float* params, int64_t begin, int64_t end);
using L2StepFn = void (*)(float* delta, const void* grad, const float* x, const bool* mask,
                          const PgdLayout& layout, const float* box, float eps, float alpha, int64_t begin,
                          int64_t end);
using LinfInitFn = void (*)(float* delta, const float* x, const PgdLayout& layout, const float* params,
                            int64_t begin, int64_t end);
using L2InitFn = void (*)(float* delta, const float* x, const float* radius, const PgdLayout& layout,
                          const float* box, float eps, int64_t begin, int64_t end);

struct KernelTable {
  const char* isa;
  LinfStepFn linf_step[3];  // indexed by math::GradKind
  L2StepFn l2_step[3];
  LinfInitFn linf_init_from_uniform;
  L2InitFn l2_init_from_normal;
};

// Every build has the portable table; the x86-64 ones exist where RRM_FAST_X86_ISA_TABLES is 1.
const KernelTable& kernels_default();
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RRM_FAST_X86_ISA_TABLES 1
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
#else
#define RRM_FAST_X86_ISA_TABLES 0
#endif

}  // namespace cpu
}  // namespace rrm_fast
