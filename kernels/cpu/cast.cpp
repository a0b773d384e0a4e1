// CPU reference for f32 <-> bf16 and f32 <-> f16 (IEEE binary16), through
// the conversions in runtime/core/dtype.h. See kernels/cast.h.
//
// Note [Cast NaNs]: IEEE leaves the payload of a converted NaN open, and
// implementations differ (CUDA's __float2half_rn may return a canonical NaN,
// as its host path's 0x7fff does; x86's F16C keeps the payload), so NaNs
// take one rule, the same on both devices (kernels/cuda/cast.cu) and for
// bf16 and f16, and a cast is bitwise reproducible. Narrowing keeps the sign
// and the top payload bits and sets the quiet bit, so a NaN never rounds to
// inf; widening is exact, bits shifted into place (a signalling NaN stays
// signalling). Every other value converts as IEEE says: round to nearest
// even narrowing, exact widening.
#include "kernels/cast.h"

namespace tandem::kernels::cpu {

void cast_f32_to_bf16(uint16_t* out, const float* inp, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(inp[i]);
}

void cast_bf16_to_f32(float* out, const uint16_t* inp, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = bf16_to_f32(inp[i]);
}

void cast_f32_to_f16(uint16_t* out, const float* inp, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = f32_to_f16(inp[i]);
}

void cast_f16_to_f32(float* out, const uint16_t* inp, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = f16_to_f32(inp[i]);
}

}  // namespace tandem::kernels::cpu
