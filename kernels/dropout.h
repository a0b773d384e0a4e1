// Inverted dropout with a counter-based mask: element i is kept iff
// philox_uniform(seed, offset + i) >= p, and kept elements are scaled by
// 1 / (1 - p) so the expectation is unchanged. The mask is a pure function
// of (seed, offset + i), so backward recomputes it instead of storing it,
// and the CPU and CUDA masks are identical (runtime/core/philox.h).
//
// The caller hands out disjoint counter ranges: a layer that drops n
// elements takes [offset, offset + n) of its seed's stream and the next
// layer starts at offset + n.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

struct DropoutOptions {
  float p;          // drop probability, in [0, 1)
  uint64_t seed;    // Philox key
  uint64_t offset;  // counter of element 0
};

// The factor applied to kept elements. Computed once, on the host, by both
// twins: x * (1 / (1 - p)), as PyTorch does, rather than x / (1 - p), so the
// CPU and CUDA values agree bitwise for f32.
inline float dropout_scale(const DropoutOptions& opts) { return 1.f / (1.f - opts.p); }

namespace cpu {
void dropout_forward(float* out, const float* inp, int64_t n, const DropoutOptions& opts);
void dropout_backward(float* dinp, const float* dout, int64_t n, const DropoutOptions& opts);
}  // namespace cpu

namespace cuda {
void dropout_forward(void* out, const void* inp, int64_t n, DType dtype, const DropoutOptions& opts,
                     CUstream_st* stream);
void dropout_backward(void* dinp, const void* dout, int64_t n, DType dtype, const DropoutOptions& opts,
                      CUstream_st* stream);
}  // namespace cuda

namespace detail {

inline void check_dropout(const Tensor& out, const Tensor& inp, const DropoutOptions& opts, const char* op) {
  check_same_float(out, inp, op);
  check_numel(out, inp.numel(), op);
  // Written so that a NaN p fails too.
  TANDEM_CHECK(opts.p >= 0.f && opts.p < 1.f, std::string(op) + ": p = " + std::to_string(opts.p) +
                                                  " is outside [0, 1)");
  // Counters offset .. offset + n - 1 must not wrap around 2^64.
  TANDEM_CHECK(opts.offset <= UINT64_MAX - static_cast<uint64_t>(inp.numel()),
               std::string(op) + ": counter offset overflows");
}

// p == 0 keeps everything with scale 1: a plain copy, no random numbers.
inline bool dropout_is_copy(const Tensor& out, const Tensor& inp, const DropoutOptions& opts,
                            const Stream& stream) {
  if (opts.p != 0.f) return false;
  if (out.data() != inp.data()) out.copy_from(inp, stream);
  return true;
}

}  // namespace detail

// out = keep(i) ? inp * scale : 0; out may alias inp.
inline void dropout_forward(const Tensor& out, const Tensor& inp, const DropoutOptions& opts,
                            const Stream& stream) {
  detail::check_dropout(out, inp, opts, "dropout_forward");
  if (detail::dropout_is_copy(out, inp, opts, stream)) return;
  if (inp.device().is_cpu()) {
    cpu::dropout_forward(out.data_as<float>(), inp.data_as<float>(), inp.numel(), opts);
  } else {
    TANDEM_CUDA_ONLY(cuda::dropout_forward(out.data(), inp.data(), inp.numel(), inp.dtype(), opts, stream.cuda()));
  }
}

// dinp = keep(i) ? dout * scale : 0, with the forward's options (so the same
// mask). dinp is overwritten (Note [Gradient writes]) and may alias dout.
inline void dropout_backward(const Tensor& dinp, const Tensor& dout, const DropoutOptions& opts,
                             const Stream& stream) {
  detail::check_dropout(dinp, dout, opts, "dropout_backward");
  if (detail::dropout_is_copy(dinp, dout, opts, stream)) return;
  if (dout.device().is_cpu()) {
    cpu::dropout_backward(dinp.data_as<float>(), dout.data_as<float>(), dout.numel(), opts);
  } else {
    TANDEM_CUDA_ONLY(
        cuda::dropout_backward(dinp.data(), dout.data(), dout.numel(), dout.dtype(), opts, stream.cuda()));
  }
}

}  // namespace tandem::kernels
