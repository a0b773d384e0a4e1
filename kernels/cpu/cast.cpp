// CPU reference for f32 <-> bf16 (through runtime/core/dtype.h) and f32 <->
// f16 (through the compiler's _Float16, IEEE binary16). See kernels/cast.h.
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

#include <cstring>

namespace tandem::kernels::cpu {

namespace {

constexpr uint32_t kF32ExpMask = 0x7f800000u;
constexpr uint16_t kF16ExpMask = 0x7c00, kF16QuietBit = 0x0200;
constexpr int kMantissaShift = 23 - 10;  // f32 has 23 mantissa bits, f16 10

template <typename To, typename From>
To bits_as(From from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

uint16_t f32_to_f16(float value) {
  uint32_t bits = bits_as<uint32_t>(value);
  if ((bits & 0x7fffffffu) > kF32ExpMask) {  // NaN: Note [Cast NaNs]
    uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
    uint16_t payload = static_cast<uint16_t>((bits & 0x007fffffu) >> kMantissaShift);
    return sign | kF16ExpMask | kF16QuietBit | payload;
  }
  return bits_as<uint16_t>(static_cast<_Float16>(value));  // round to nearest even
}

float f16_to_f32(uint16_t value) {
  if ((value & 0x7fff) > kF16ExpMask) {  // NaN: Note [Cast NaNs]
    uint32_t sign = static_cast<uint32_t>(value & 0x8000) << 16;
    uint32_t payload = static_cast<uint32_t>(value & 0x03ff) << kMantissaShift;
    return bits_as<float>(sign | kF32ExpMask | payload);
  }
  return static_cast<float>(bits_as<_Float16>(value));  // exact
}

}  // namespace

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
