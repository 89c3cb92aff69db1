// How the kernels see a batch: torch-free, shared by the CPU and CUDA kernels.
#pragma once

#include <stdint.h>

namespace rrm_fast {

// A dense (N, C, ...) batch as N samples of `sample_size` consecutive elements.
// Within a sample, the parameter channel of element i is (i / inner) % channels:
//   NCHW-contiguous with per-channel parameters:  outer = 1,   channels = C, inner = H*W
//   channels_last with per-channel parameters:    outer = H*W, channels = C, inner = 1
//   scalar parameters (any dense layout):         outer = 1,   channels = 1, inner = sample_size
struct PgdLayout {
  int64_t samples;
  int64_t sample_size;  // outer * channels * inner
  int64_t outer;
  int64_t channels;
  int64_t inner;
};

// Parameter rows of the ops, each `channels` floats long, in this order.
enum LinfStepParam : int { kLinfEps = 0, kLinfAlpha = 1, kLinfLo = 2, kLinfHi = 3, kLinfStepParams = 4 };
enum LinfInitParam : int { kInitEps = 0, kInitLo = 1, kInitHi = 2, kLinfInitParams = 3 };
enum BoxParam : int { kBoxLo = 0, kBoxHi = 1, kBoxParams = 2 };

}  // namespace rrm_fast
