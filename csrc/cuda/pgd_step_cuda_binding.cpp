// CUDA registration of the rrm_fast PGD step ops and the Python module rrm_fast._C_cuda.
//
// Compiled only in the CUDA build (it needs torch's CUDA headers); the kernels themselves
// are in the torch-free pgd_step_cuda_kernels.cu. The schemas come from rrm_fast._C,
// which rrm_fast/_ext.py imports first.
#include <Python.h>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <atomic>

#include "cuda/pgd_step_cuda.h"
#include "pgd_step_checks.h"

namespace rrm_fast {
namespace {

void check_on_cuda(const char* op, const at::Tensor& delta) {
  TORCH_CHECK(delta.is_cuda(), "rrm_fast::", op, ": the CUDA kernel got delta on ", delta.device());
  TORCH_CHECK(delta.numel() / std::max<int64_t>(1, delta.size(0)) <= cuda::kMaxSampleSize, "rrm_fast::", op,
              ": a sample has more than 2^31 - 1 elements; split it");
}

void check_launch(const char* op, cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, "rrm_fast::", op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

// Streaming multiprocessors of the current device, looked up once per device (it sizes
// the elementwise grids).
int multiprocessors() {
  static std::array<std::atomic<int>, 64> cache{};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const bool cached = device < static_cast<int>(cache.size());
  int count = cached ? cache[device].load(std::memory_order_relaxed) : 0;
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    if (cached) cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

const float* rows_or_null(const std::optional<at::Tensor>& rows) {
  return rows.has_value() ? rows->const_data_ptr<float>() : nullptr;
}

const bool* mask_or_null(const std::optional<at::Tensor>& mask) {
  return mask.has_value() ? mask->const_data_ptr<bool>() : nullptr;
}

void linf_step_cuda(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                    const std::optional<at::Tensor>& mask, double eps, double alpha, double lo, double hi,
                    const std::optional<at::Tensor>& channel_params) {
  const char* op = "linf_step_";
  const int kind = check_linf_step(delta, grad, x, mask, channel_params);
  check_on_cuda(op, delta);
  if (delta.numel() == 0) return;
  at::assert_no_overlap(delta, x);
  const c10::cuda::CUDAGuard guard(delta.device());
  check_launch(op, cuda::linf_step(delta.data_ptr<float>(), grad.const_data_ptr(), kind, x.const_data_ptr<float>(),
                                   mask_or_null(mask), batch_layout(op, delta, channel_params.has_value()),
                                   rows_or_null(channel_params), float(eps), float(alpha), float(lo), float(hi),
                                   multiprocessors(), c10::cuda::getCurrentCUDAStream()));
}

void l2_step_cuda(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                  const std::optional<at::Tensor>& mask, double eps, double alpha, double lo, double hi,
                  const std::optional<at::Tensor>& channel_box) {
  const char* op = "l2_step_";
  const int kind = check_l2_step(delta, grad, x, mask, channel_box);
  check_on_cuda(op, delta);
  if (delta.numel() == 0) return;
  at::assert_no_overlap(delta, x);
  at::assert_no_overlap(delta, grad);
  const c10::cuda::CUDAGuard guard(delta.device());
  check_launch(op, cuda::l2_step(delta.data_ptr<float>(), grad.const_data_ptr(), kind, x.const_data_ptr<float>(),
                                 mask_or_null(mask), batch_layout(op, delta, channel_box.has_value()),
                                 rows_or_null(channel_box), float(eps), float(alpha), float(lo), float(hi),
                                 c10::cuda::getCurrentCUDAStream()));
}

void linf_init_cuda(const at::Tensor& delta, const at::Tensor& x, double eps, double lo, double hi,
                    const std::optional<at::Tensor>& channel_params) {
  const char* op = "linf_init_from_uniform_";
  check_linf_init(delta, x, channel_params);
  check_on_cuda(op, delta);
  if (delta.numel() == 0) return;
  at::assert_no_overlap(delta, x);
  const c10::cuda::CUDAGuard guard(delta.device());
  check_launch(op, cuda::linf_init_from_uniform(delta.data_ptr<float>(), x.const_data_ptr<float>(),
                                                batch_layout(op, delta, channel_params.has_value()),
                                                rows_or_null(channel_params), float(eps), float(lo), float(hi),
                                                multiprocessors(), c10::cuda::getCurrentCUDAStream()));
}

void l2_init_cuda(const at::Tensor& delta, const at::Tensor& x, const at::Tensor& radius, double eps, double lo,
                  double hi, const std::optional<at::Tensor>& channel_box) {
  const char* op = "l2_init_from_normal_";
  check_l2_init(delta, x, radius, channel_box);
  check_on_cuda(op, delta);
  if (delta.numel() == 0) return;
  at::assert_no_overlap(delta, x);
  const c10::cuda::CUDAGuard guard(delta.device());
  check_launch(op, cuda::l2_init_from_normal(delta.data_ptr<float>(), x.const_data_ptr<float>(),
                                             radius.const_data_ptr<float>(),
                                             batch_layout(op, delta, channel_box.has_value()),
                                             rows_or_null(channel_box), float(eps), float(lo), float(hi),
                                             c10::cuda::getCurrentCUDAStream()));
}

}  // namespace
}  // namespace rrm_fast

TORCH_LIBRARY_IMPL(rrm_fast, CUDA, m) {
  m.impl("linf_step_", &rrm_fast::linf_step_cuda);
  m.impl("l2_step_", &rrm_fast::l2_step_cuda);
  m.impl("linf_init_from_uniform_", &rrm_fast::linf_init_cuda);
  m.impl("l2_init_from_normal_", &rrm_fast::l2_init_cuda);
}

namespace {
PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", "rrm_fast compiled PGD step ops (CUDA)", -1, nullptr};
}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C_cuda(void) {
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr) PyModule_AddIntConstant(module, "ABI_VERSION", rrm_fast::kPgdExtAbiVersion);
  return module;
}
