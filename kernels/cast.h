// Element type conversion between f32 and a 16-bit float (bf16 or f16), both
// directions, on either device (the one kernel whose CPU twin handles 16-bit
// floats). f32 -> bf16/f16 rounds to nearest even (f16: subnormals kept,
// past 65504 + half an ulp to inf) and keeps NaNs NaN; bf16/f16 -> f32 is
// exact. The CPU and CUDA results are bitwise identical, NaN payloads
// included: Note [Cast NaNs] in kernels/cpu/cast.cpp.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

namespace cpu {
void cast_f32_to_bf16(uint16_t* out, const float* inp, int64_t n);
void cast_bf16_to_f32(float* out, const uint16_t* inp, int64_t n);
// f16 as its IEEE binary16 bits.
void cast_f32_to_f16(uint16_t* out, const float* inp, int64_t n);
void cast_f16_to_f32(float* out, const uint16_t* inp, int64_t n);
}  // namespace cpu

namespace cuda {
// One of out_dtype and in_dtype is f32, the other bf16 or f16.
void cast(void* out, DType out_dtype, const void* inp, DType in_dtype, int64_t n, CUstream_st* stream);
}  // namespace cuda

// out = inp converted to out's dtype; the same dtype is a copy. out must not
// overlap inp, except as the very same tensor of the same dtype (a no-op):
// with different element sizes an in-place conversion would overwrite
// elements not yet read. Conversions go through f32: bf16 <-> f16 is refused.
inline void cast(const Tensor& out, const Tensor& inp, const Stream& stream) {
  const char* op = "cast";
  TANDEM_CHECK(out.defined() && inp.defined(), "cast: undefined tensor");
  check_same_device(out, inp, op);
  check_numel(out, inp.numel(), op);
  for (DType dtype : {out.dtype(), inp.dtype()})
    TANDEM_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::f16,
                 std::string("cast: unsupported dtype ") + dtype_name(dtype));
  bool same_dtype = out.dtype() == inp.dtype();
  TANDEM_CHECK(same_dtype || out.dtype() == DType::f32 || inp.dtype() == DType::f32,
               std::string("cast: no conversion from ") + dtype_name(inp.dtype()) + " to " +
                   dtype_name(out.dtype()) + "; go through f32");
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
    else if (out.dtype() == DType::f16)
      cpu::cast_f32_to_f16(out.data_as<uint16_t>(), inp.data_as<float>(), n);
    else if (inp.dtype() == DType::bf16)
      cpu::cast_bf16_to_f32(out.data_as<float>(), inp.data_as<uint16_t>(), n);
    else
      cpu::cast_f16_to_f32(out.data_as<float>(), inp.data_as<uint16_t>(), n);
  } else {
    TANDEM_CUDA_ONLY(cuda::cast(out.data(), out.dtype(), inp.data(), inp.dtype(), n, stream.cuda()));
  }
}

}  // namespace tandem::kernels
