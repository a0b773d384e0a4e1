// Element type conversion between f32 and bf16, both directions, on either
// device (the one kernel whose CPU twin handles bf16). f32 -> bf16 rounds to
// nearest even and keeps NaNs NaN; bf16 -> f32 is exact. The CPU and CUDA
// results are bitwise identical, NaN payloads included.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

namespace cpu {
void cast_f32_to_bf16(uint16_t* out, const float* inp, int64_t n);
void cast_bf16_to_f32(float* out, const uint16_t* inp, int64_t n);
}  // namespace cpu

namespace cuda {
// out_dtype and in_dtype are f32 or bf16 and differ.
void cast(void* out, DType out_dtype, const void* inp, DType in_dtype, int64_t n, CUstream_st* stream);
}  // namespace cuda

// out = inp converted to out's dtype; the same dtype is a copy. out must not
// overlap inp, except as the very same tensor of the same dtype (a no-op):
// with different element sizes an in-place conversion would overwrite
// elements not yet read.
inline void cast(const Tensor& out, const Tensor& inp, const Stream& stream) {
  const char* op = "cast";
  TANDEM_CHECK(out.defined() && inp.defined(), "cast: undefined tensor");
  check_same_device(out, inp, op);
  check_numel(out, inp.numel(), op);
  for (DType dtype : {out.dtype(), inp.dtype()})
    TANDEM_CHECK(dtype == DType::f32 || dtype == DType::bf16,
                 std::string("cast: unsupported dtype ") + dtype_name(dtype));
  bool same_dtype = out.dtype() == inp.dtype();
  if (same_dtype && out.data() == inp.data()) return;  // a copy onto itself
  auto begin = [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data()); };
  bool disjoint = begin(out) + out.nbytes() <= begin(inp) || begin(inp) + inp.nbytes() <= begin(out);
  TANDEM_CHECK(disjoint, "cast: out partly overlaps inp");
  if (same_dtype) {
    out.copy_from(inp, stream);
    return;
  }
  int64_t n = inp.numel();
  if (inp.device().is_cpu()) {
    if (out.dtype() == DType::bf16)
      cpu::cast_f32_to_bf16(out.data_as<uint16_t>(), inp.data_as<float>(), n);
    else
      cpu::cast_bf16_to_f32(out.data_as<float>(), inp.data_as<uint16_t>(), n);
  } else {
    TANDEM_CUDA_ONLY(cuda::cast(out.data(), out.dtype(), inp.data(), inp.dtype(), n, stream.cuda()));
  }
}

}  // namespace tandem::kernels
