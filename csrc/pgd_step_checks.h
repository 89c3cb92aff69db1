// Argument checks and batch layout of the PGD step ops, shared by the CPU, Meta and
// CUDA registrations (torch-facing, header-only so that the CUDA binding compiles it too).
//
// The Python wrappers in rrm_fast/ops/pgd_step.py already bring the arguments into this
// form; these checks make a direct torch.ops.rrm_fast call fail with a clear message
// instead of reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "pgd_layout.h"
#include "pgd_math.h"

namespace rrm_fast {

// Bumped whenever a schema or a kernel contract changes; rrm_fast/_ext.py refuses an
// extension built from other sources (a stale in-place build) and falls back.
constexpr int kPgdExtAbiVersion = 1;

// The memory order of a dense batch: NCHW-contiguous, or channels_last(_3d).
inline at::MemoryFormat batch_memory_format(const char* op, const at::Tensor& delta) {
  if (delta.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (delta.dim() == 4 && delta.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  if (delta.dim() == 5 && delta.is_contiguous(at::MemoryFormat::ChannelsLast3d))
    return at::MemoryFormat::ChannelsLast3d;
  TORCH_CHECK(false, "rrm_fast::", op, ": delta must be contiguous or channels_last, got strides ", delta.strides(),
              "; step a contiguous copy and copy it back (the rrm_fast.ops wrappers do this)");
}

inline void check_batch(const char* op, const at::Tensor& delta, const at::Tensor& x) {
  TORCH_CHECK(delta.scalar_type() == at::kFloat, "rrm_fast::", op, ": delta must be float32, got ",
              delta.scalar_type(), "; keep the perturbation in float32 (delta = torch.zeros_like(x, dtype=torch.float32))");
  TORCH_CHECK(delta.dim() >= 2, "rrm_fast::", op, ": delta must be a batch (N, C, ...), got shape ", delta.sizes(),
              "; add the batch dimension with unsqueeze(0)");
  TORCH_CHECK(x.sizes() == delta.sizes(), "rrm_fast::", op, ": x must have the shape of delta ", delta.sizes(),
              ", got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "rrm_fast::", op, ": x must be float32, got ", x.scalar_type(),
              "; pass x.float()");
  TORCH_CHECK(x.device() == delta.device(), "rrm_fast::", op, ": x is on ", x.device(), " but delta is on ",
              delta.device(), "; move both to one device");
  const at::MemoryFormat format = batch_memory_format(op, delta);
  TORCH_CHECK(x.is_contiguous(format), "rrm_fast::", op, ": x must have the memory layout of delta (", format,
              "); pass x.contiguous(memory_format=...) matching delta");
}

inline int grad_kind(const char* op, const at::Tensor& delta, const at::Tensor& grad) {
  TORCH_CHECK(grad.sizes() == delta.sizes(), "rrm_fast::", op, ": grad must have the shape of delta ",
              delta.sizes(), ", got ", grad.sizes(), "; pass the gradient with respect to the input");
  TORCH_CHECK(grad.device() == delta.device(), "rrm_fast::", op, ": grad is on ", grad.device(),
              " but delta is on ", delta.device(), "; move both to one device");
  TORCH_CHECK(grad.is_contiguous(batch_memory_format(op, delta)), "rrm_fast::", op,
              ": grad must have the memory layout of delta; pass grad.contiguous(memory_format=...) matching delta");
  switch (grad.scalar_type()) {
    case at::kFloat:
      return math::kGradFloat;
    case at::kHalf:
      return math::kGradHalf;
    case at::kBFloat16:
      return math::kGradBFloat16;
    default:
      TORCH_CHECK(false, "rrm_fast::", op, ": grad must be float32, float16 or bfloat16, got ", grad.scalar_type(),
                  "; cast it with grad.float()");
  }
}

inline void check_mask(const char* op, const at::Tensor& delta, const std::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return;
  TORCH_CHECK(mask->scalar_type() == at::kBool, "rrm_fast::", op, ": mask must be bool, got ", mask->scalar_type(),
              "; pass mask.bool()");
  TORCH_CHECK(mask->dim() == 1 && mask->size(0) == delta.size(0), "rrm_fast::", op,
              ": mask must have one entry per sample, shape (", delta.size(0), ",), got ", mask->sizes());
  TORCH_CHECK(mask->device() == delta.device(), "rrm_fast::", op, ": mask is on ", mask->device(),
              " but delta is on ", delta.device(), "; move both to one device");
  TORCH_CHECK(mask->is_contiguous(), "rrm_fast::", op, ": mask must be contiguous; pass mask.contiguous()");
}

// Per-channel parameters: `rows` float32 rows of C = delta.size(1) values each.
inline void check_channel_params(const char* op, const at::Tensor& delta, const std::optional<at::Tensor>& params,
                                 int64_t rows, const char* row_names) {
  if (!params.has_value()) return;
  TORCH_CHECK(params->scalar_type() == at::kFloat && params->dim() == 2 && params->size(0) == rows &&
                  params->size(1) == delta.size(1),
              "rrm_fast::", op, ": channel parameters must be a float32 tensor of shape (", rows, ", ", delta.size(1),
              ") with rows ", row_names, ", got ", params->scalar_type(), " ", params->sizes());
  TORCH_CHECK(params->device() == delta.device(), "rrm_fast::", op, ": channel parameters are on ", params->device(),
              " but delta is on ", delta.device(), "; move both to one device");
  TORCH_CHECK(params->is_contiguous(), "rrm_fast::", op, ": channel parameters must be contiguous");
}

inline void check_radius(const char* op, const at::Tensor& delta, const at::Tensor& radius) {
  TORCH_CHECK(radius.scalar_type() == at::kFloat && radius.dim() == 1 && radius.size(0) == delta.size(0),
              "rrm_fast::", op, ": radius must be float32 of shape (", delta.size(0), ",), got ", radius.scalar_type(),
              " ", radius.sizes());
  TORCH_CHECK(radius.device() == delta.device(), "rrm_fast::", op, ": radius is on ", radius.device(),
              " but delta is on ", delta.device(), "; move both to one device");
  TORCH_CHECK(radius.is_contiguous(), "rrm_fast::", op, ": radius must be contiguous");
}

// How the kernels walk the batch (see pgd_layout.h). Only valid after check_batch and
// for a non-empty batch.
inline PgdLayout batch_layout(const char* op, const at::Tensor& delta, bool per_channel) {
  const int64_t samples = delta.size(0);
  const int64_t sample_size = delta.numel() / samples;
  if (!per_channel) return PgdLayout{samples, sample_size, 1, 1, sample_size};
  const int64_t channels = delta.size(1);
  const int64_t pixels = sample_size / channels;
  if (batch_memory_format(op, delta) == at::MemoryFormat::Contiguous)
    return PgdLayout{samples, sample_size, 1, channels, pixels};
  return PgdLayout{samples, sample_size, pixels, channels, 1};
}

// ---------------------------------------------------------------------------------------
// All checks of one op (the CPU, CUDA and Meta kernels start with these)
// ---------------------------------------------------------------------------------------

// Returns the math::GradKind of grad.
inline int check_linf_step(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                           const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& channel_params) {
  const char* op = "linf_step_";
  check_batch(op, delta, x);
  const int kind = grad_kind(op, delta, grad);
  check_mask(op, delta, mask);
  check_channel_params(op, delta, channel_params, kLinfStepParams, "(eps, alpha, lo, hi)");
  return kind;
}

inline int check_l2_step(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                         const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& channel_box) {
  const char* op = "l2_step_";
  check_batch(op, delta, x);
  const int kind = grad_kind(op, delta, grad);
  check_mask(op, delta, mask);
  check_channel_params(op, delta, channel_box, kBoxParams, "(lo, hi)");
  return kind;
}

inline void check_linf_init(const at::Tensor& delta, const at::Tensor& x,
                            const std::optional<at::Tensor>& channel_params) {
  const char* op = "linf_init_from_uniform_";
  check_batch(op, delta, x);
  check_channel_params(op, delta, channel_params, kLinfInitParams, "(eps, lo, hi)");
}

inline void check_l2_init(const at::Tensor& delta, const at::Tensor& x, const at::Tensor& radius,
                          const std::optional<at::Tensor>& channel_box) {
  const char* op = "l2_init_from_normal_";
  check_batch(op, delta, x);
  check_radius(op, delta, radius);
  check_channel_params(op, delta, channel_box, kBoxParams, "(lo, hi)");
}

}  // namespace rrm_fast
