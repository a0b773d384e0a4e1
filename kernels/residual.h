// Residual connection: out = a + b, elementwise. out may alias a or b, so
// the sum can be taken in place into the residual stream.
#pragma once

#include "kernels/common.h"

namespace tandem::kernels {

namespace cpu {
void residual_add(float* out, const float* a, const float* b, int64_t n);
}  // namespace cpu

namespace cuda {
void residual_add(void* out, const void* a, const void* b, int64_t n, DType dtype, CUstream_st* stream);
}  // namespace cuda

inline void residual_add(const Tensor& out, const Tensor& a, const Tensor& b, const Stream& stream) {
  check_same_float(out, a, "residual_add");
  check_same_float(b, a, "residual_add");
  check_numel(out, a.numel(), "residual_add");
  check_numel(b, a.numel(), "residual_add");
  int64_t n = a.numel();
  if (a.device().is_cpu()) {
    cpu::residual_add(out.data_as<float>(), a.data_as<float>(), b.data_as<float>(), n);
  } else {
    TANDEM_CUDA_ONLY(cuda::residual_add(out.data(), a.data(), b.data(), n, a.dtype(), stream.cuda()));
  }
}

}  // namespace tandem::kernels
