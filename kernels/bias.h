// Bias over the last dimension: forward adds a (C) vector to every row of an
// (N, C) matrix; backward accumulates the column sums of dout into dbias.
// dbias is a parameter gradient, so it accumulates (+=): see Note [Gradient
// writes] in kernels/common.h. Leading dimensions are flattened: a (B, T, C)
// tensor is N = B*T rows of C.
//
// The CUDA bias_backward is deterministic: each column is summed in one
// fixed order, so two runs give bitwise identical dbias (no atomics).
//
#pragma once

#include "kernels/common.h"

namespace tandem::kernels {

namespace cpu {
void bias_add(float* out, const float* bias, int64_t N, int64_t C);
void bias_backward(float* dbias, const float* dout, int64_t N, int64_t C);
}  // namespace cpu

namespace cuda {
void bias_add(void* out, const void* bias, int64_t N, int64_t C, DType dtype, CUstream_st* stream);
void bias_backward(void* dbias, const void* dout, int64_t N, int64_t C, DType dtype, CUstream_st* stream);
}  // namespace cuda

// The number of rows of `t` seen as a matrix of its last dimension: the
// product of all the other dimensions (1 for a 1-d tensor).
inline int64_t rows_of(const Tensor& t, const char* op) {
  TANDEM_CHECK(t.ndim() >= 1, std::string(op) + ": expected at least one dimension, got a scalar");
  int64_t rows = 1;
  for (int i = 0; i + 1 < t.ndim(); i++) rows *= t.shape()[i];
  return rows;
}

inline void check_last_dim(const Tensor& t, int64_t C, const char* op) {
  TANDEM_CHECK(t.ndim() >= 1 && t.dim(-1) == C, std::string(op) + ": expected last dimension " +
                                                    std::to_string(C) + ", got " + shape_str(t.shape()));
}

// out += bias, broadcast over rows.
inline void bias_add(const Tensor& out /* (N, C) */, const Tensor& bias /* (C) */,
                     const Stream& stream) {
  check_same_float(out, bias, "bias_add");
  check_float(bias, "bias_add");
  int64_t C = bias.numel();
  check_last_dim(out, C, "bias_add");
  int64_t N = rows_of(out, "bias_add");
  if (out.device().is_cpu()) {
    cpu::bias_add(out.data_as<float>(), bias.data_as<float>(), N, C);
  } else {
    TANDEM_CUDA_ONLY(cuda::bias_add(out.data(), bias.data(), N, C, out.dtype(), stream.cuda()));
  }
}

// dbias += column sums of dout.
inline void bias_backward(const Tensor& dbias /* (C) */, const Tensor& dout /* (N, C) */,
                          const Stream& stream) {
  check_same_float(dbias, dout, "bias_backward");
  check_float(dout, "bias_backward");
  int64_t C = dbias.numel();
  check_last_dim(dout, C, "bias_backward");
  int64_t N = rows_of(dout, "bias_backward");
  if (dout.device().is_cpu()) {
    cpu::bias_backward(dbias.data_as<float>(), dout.data_as<float>(), N, C);
  } else {
    TANDEM_CUDA_ONLY(cuda::bias_backward(dbias.data(), dout.data(), N, C, dout.dtype(), stream.cuda()));
  }
}

}  // namespace tandem::kernels
