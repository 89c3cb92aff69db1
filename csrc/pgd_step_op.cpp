// The rrm_fast PGD step custom ops: schemas, CPU and Meta kernels, and the Python
// module rrm_fast._C that loads them.
//
// Every op mutates `delta` in place (schema `Tensor(a!) delta`) and returns nothing, so
// torch.compile functionalises it and opcheck can verify the declared mutation. The
// CUDA kernels register for the same schemas from rrm_fast._C_cuda (csrc/cuda/), built
// only where torch has CUDA.
#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/pgd_step_cpu.h"
#include "pgd_step_checks.h"

namespace rrm_fast {
namespace {

// ----------------------------------------------------------------------------------
// Instruction-set selection
// ----------------------------------------------------------------------------------

bool cpu_supports(const std::string& isa) {
  if (isa == "default") return true;
#if RRM_FAST_X86_ISA_TABLES
  __builtin_cpu_init();
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && cpu_supports("avx2");
#endif
  return false;
}

const cpu::KernelTable* table_for(const std::string& isa) {
#if RRM_FAST_X86_ISA_TABLES
  if (isa == "avx512") return &cpu::kernels_avx512();
  if (isa == "avx2") return &cpu::kernels_avx2();
#endif
  if (isa == "default") return &cpu::kernels_default();
  return nullptr;
}

const cpu::KernelTable* best_table() {
  for (const char* isa : {"avx512", "avx2"}) {
    if (cpu_supports(isa)) return table_for(isa);
  }
  return &cpu::kernels_default();
}

// RRM_FAST_CPU_ISA=default|avx2|avx512 caps the choice (to compare or to work around a CPU).
const cpu::KernelTable* initial_table() {
  const char* requested = std::getenv("RRM_FAST_CPU_ISA");
  if (requested == nullptr || *requested == '\0' || std::strcmp(requested, "auto") == 0) return best_table();
  const cpu::KernelTable* table = table_for(requested);
  TORCH_CHECK(table != nullptr && cpu_supports(requested), "rrm_fast: RRM_FAST_CPU_ISA=", requested,
              " is not available on this CPU/build; use auto, default, avx2 or avx512");
  return table;
}

std::atomic<const cpu::KernelTable*>& active_table_slot() {
  static std::atomic<const cpu::KernelTable*> slot{initial_table()};
  return slot;
}

const cpu::KernelTable& active_table() { return *active_table_slot().load(std::memory_order_relaxed); }

// Elements per parallel chunk: large enough that a chunk costs far more than waking a thread.
constexpr int64_t kElementGrain = 1 << 15;

int64_t sample_grain(int64_t sample_size) { return std::max<int64_t>(1, kElementGrain / std::max<int64_t>(1, sample_size)); }

void check_cpu(const char* op, const at::Tensor& delta) {
  TORCH_CHECK(delta.device().is_cpu(), "rrm_fast::", op, ": the CPU kernel got delta on ", delta.device());
}

// ----------------------------------------------------------------------------------
// Ops: Meta kernels (the argument checks alone) and CPU kernels
// ----------------------------------------------------------------------------------

void linf_step_meta(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                    const std::optional<at::Tensor>& mask, double, double, double, double,
                    const std::optional<at::Tensor>& channel_params) {
  check_linf_step(delta, grad, x, mask, channel_params);
}

void linf_step_cpu(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                   const std::optional<at::Tensor>& mask, double eps, double alpha, double lo, double hi,
                   const std::optional<at::Tensor>& channel_params) {
  const char* op = "linf_step_";
  const int kind = check_linf_step(delta, grad, x, mask, channel_params);
  check_cpu(op, delta);
  if (delta.numel() == 0) return;
  at::assert_no_overlap(delta, x);
  const float scalars[kLinfStepParams] = {float(eps), float(alpha), float(lo), float(hi)};
  const float* params = channel_params.has_value() ? channel_params->data_ptr<float>() : scalars;
  const PgdLayout layout = batch_layout(op, delta, channel_params.has_value());
  const cpu::LinfStepFn kernel = active_table().linf_step[kind];
  float* d = delta.data_ptr<float>();
  const void* g = grad.const_data_ptr();
  const float* xp = x.const_data_ptr<float>();
  const bool* m = mask.has_value() ? mask->const_data_ptr<bool>() : nullptr;
  at::parallel_for(0, delta.numel(), kElementGrain,
                   [&](int64_t begin, int64_t end) { kernel(d, g, xp, m, layout, params, begin, end); });
}

void l2_step_meta(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                  const std::optional<at::Tensor>& mask, double, double, double, double,
                  const std::optional<at::Tensor>& channel_box) {
  check_l2_step(delta, grad, x, mask, channel_box);
}

void l2_step_cpu(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                 const std::optional<at::Tensor>& mask, double eps, double alpha, double lo, double hi,
                 const std::optional<at::Tensor>& channel_box) {
  const char* op = "l2_step_";
  const int kind = check_l2_step(delta, grad, x, mask, channel_box);
  check_cpu(op, delta);
  if (delta.numel() == 0) return;
  // A sample's grad is read in all three passes, the last of which writes delta: memory
  // shared by the two would change the norms mid-way.
  at::assert_no_overlap(delta, x);
  at::assert_no_overlap(delta, grad);
  const float scalars[kBoxParams] = {float(lo), float(hi)};
  const float* box = channel_box.has_value() ? channel_box->data_ptr<float>() : scalars;
  const PgdLayout layout = batch_layout(op, delta, channel_box.has_value());
  const cpu::L2StepFn kernel = active_table().l2_step[kind];
  float* d = delta.data_ptr<float>();
  const void* g = grad.const_data_ptr();
  const float* xp = x.const_data_ptr<float>();
  const bool* m = mask.has_value() ? mask->const_data_ptr<bool>() : nullptr;
  const float eps_f = float(eps), alpha_f = float(alpha);
  at::parallel_for(0, layout.samples, sample_grain(layout.sample_size), [&](int64_t begin, int64_t end) {
    kernel(d, g, xp, m, layout, box, eps_f, alpha_f, begin, end);
  });
}

void linf_init_meta(const at::Tensor& delta, const at::Tensor& x, double, double, double,
                    const std::optional<at::Tensor>& channel_params) {
  check_linf_init(delta, x, channel_params);
}

void linf_init_cpu(const at::Tensor& delta, const at::Tensor& x, double eps, double lo, double hi,
                   const std::optional<at::Tensor>& channel_params) {
  const char* op = "linf_init_from_uniform_";
  check_linf_init(delta, x, channel_params);
  check_cpu(op, delta);
  if (delta.numel() == 0) return;
  at::assert_no_overlap(delta, x);
  const float scalars[kLinfInitParams] = {float(eps), float(lo), float(hi)};
  const float* params = channel_params.has_value() ? channel_params->data_ptr<float>() : scalars;
  const PgdLayout layout = batch_layout(op, delta, channel_params.has_value());
  const cpu::LinfInitFn kernel = active_table().linf_init_from_uniform;
  float* d = delta.data_ptr<float>();
  const float* xp = x.const_data_ptr<float>();
  at::parallel_for(0, delta.numel(), kElementGrain,
                   [&](int64_t begin, int64_t end) { kernel(d, xp, layout, params, begin, end); });
}

void l2_init_meta(const at::Tensor& delta, const at::Tensor& x, const at::Tensor& radius, double, double, double,
                  const std::optional<at::Tensor>& channel_box) {
  check_l2_init(delta, x, radius, channel_box);
}

void l2_init_cpu(const at::Tensor& delta, const at::Tensor& x, const at::Tensor& radius, double eps, double lo,
                 double hi, const std::optional<at::Tensor>& channel_box) {
  const char* op = "l2_init_from_normal_";
  check_l2_init(delta, x, radius, channel_box);
  check_cpu(op, delta);
  if (delta.numel() == 0) return;
  at::assert_no_overlap(delta, x);
  const float scalars[kBoxParams] = {float(lo), float(hi)};
  const float* box = channel_box.has_value() ? channel_box->data_ptr<float>() : scalars;
  const PgdLayout layout = batch_layout(op, delta, channel_box.has_value());
  const cpu::L2InitFn kernel = active_table().l2_init_from_normal;
  float* d = delta.data_ptr<float>();
  const float* xp = x.const_data_ptr<float>();
  const float* r = radius.const_data_ptr<float>();
  const float eps_f = float(eps);
  at::parallel_for(0, layout.samples, sample_grain(layout.sample_size),
                   [&](int64_t begin, int64_t end) { kernel(d, xp, r, layout, box, eps_f, begin, end); });
}

}  // namespace
}  // namespace rrm_fast

// ------------------------------------------------------------------------------------
// Registration
// ------------------------------------------------------------------------------------

TORCH_LIBRARY(rrm_fast, m) {
  // The kernels index raw memory in delta's layout; keep torch.compile from restriding inputs.
  const std::vector<at::Tag> tags = {at::Tag::needs_exact_strides};
  m.def(
      "linf_step_(Tensor(a!) delta, Tensor grad, Tensor x, Tensor? mask, float eps, float alpha, float lo, "
      "float hi, Tensor? channel_params) -> ()",
      tags);
  m.def(
      "l2_step_(Tensor(a!) delta, Tensor grad, Tensor x, Tensor? mask, float eps, float alpha, float lo, "
      "float hi, Tensor? channel_box) -> ()",
      tags);
  m.def("linf_init_from_uniform_(Tensor(a!) delta, Tensor x, float eps, float lo, float hi, "
        "Tensor? channel_params) -> ()",
        tags);
  m.def("l2_init_from_normal_(Tensor(a!) delta, Tensor x, Tensor radius, float eps, float lo, float hi, "
        "Tensor? channel_box) -> ()",
        tags);
}

TORCH_LIBRARY_IMPL(rrm_fast, CPU, m) {
  m.impl("linf_step_", &rrm_fast::linf_step_cpu);
  m.impl("l2_step_", &rrm_fast::l2_step_cpu);
  m.impl("linf_init_from_uniform_", &rrm_fast::linf_init_cpu);
  m.impl("l2_init_from_normal_", &rrm_fast::l2_init_cpu);
}

TORCH_LIBRARY_IMPL(rrm_fast, Meta, m) {
  m.impl("linf_step_", &rrm_fast::linf_step_meta);
  m.impl("l2_step_", &rrm_fast::l2_step_meta);
  m.impl("linf_init_from_uniform_", &rrm_fast::linf_init_meta);
  m.impl("l2_init_from_normal_", &rrm_fast::l2_init_meta);
}

// ------------------------------------------------------------------------------------
// Python module rrm_fast._C: importing it runs the registrations above; its functions
// report and switch the CPU instruction set (for rrm_fast.info and the tests).
// ------------------------------------------------------------------------------------

namespace {

// The first use of the kernels reads RRM_FAST_CPU_ISA and may throw; no C++ exception may
// cross into Python through these functions.
PyObject* py_cpu_isa(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(rrm_fast::active_table().isa);
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  }
}

PyObject* py_supported_cpu_isas(PyObject*, PyObject*) {
  PyObject* names = PyList_New(0);
  for (const char* isa : {"default", "avx2", "avx512"}) {
    if (rrm_fast::table_for(isa) != nullptr && rrm_fast::cpu_supports(isa)) {
      PyObject* name = PyUnicode_FromString(isa);
      PyList_Append(names, name);
      Py_DECREF(name);
    }
  }
  return names;
}

PyObject* py_set_cpu_isa(PyObject*, PyObject* arg) {
  const char* isa = PyUnicode_AsUTF8(arg);
  if (isa == nullptr) return nullptr;
  const bool automatic = std::strcmp(isa, "auto") == 0;
  const rrm_fast::cpu::KernelTable* table = automatic ? rrm_fast::best_table() : rrm_fast::table_for(isa);
  if (table == nullptr || !rrm_fast::cpu_supports(table->isa)) {
    PyErr_Format(PyExc_ValueError,
                 "rrm_fast: CPU instruction set '%s' is not available here; use 'auto' or one of supported_cpu_isas()",
                 isa);
    return nullptr;
  }
  try {
    const rrm_fast::cpu::KernelTable* previous = rrm_fast::active_table_slot().exchange(table);
    return PyUnicode_FromString(previous->isa);
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  }
}

PyMethodDef module_methods[] = {
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "Instruction set of the CPU kernels in use."},
    {"supported_cpu_isas", py_supported_cpu_isas, METH_NOARGS, "Instruction sets this CPU and build can run."},
    {"set_cpu_isa", py_set_cpu_isa, METH_O, "Switch the CPU kernels ('auto', 'default', 'avx2', 'avx512'); returns the previous."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "rrm_fast compiled PGD step ops (CPU)", -1, module_methods};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr) PyModule_AddIntConstant(module, "ABI_VERSION", rrm_fast::kPgdExtAbiVersion);
  return module;
}
