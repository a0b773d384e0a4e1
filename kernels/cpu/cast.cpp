// CPU reference for f32 <-> bf16 conversion, through runtime/core/dtype.h.
// See kernels/cast.h.
#include "kernels/cast.h"

namespace tandem::kernels::cpu {

void cast_f32_to_bf16(uint16_t* out, const float* inp, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(inp[i]);
}

void cast_bf16_to_f32(float* out, const uint16_t* inp, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = bf16_to_f32(inp[i]);
}

}  // namespace tandem::kernels::cpu
