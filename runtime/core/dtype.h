// Element types. Storage types only: arithmetic is always fp32 or wider.
#pragma once

#include <cstddef>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem {

enum class DType : uint8_t { f32, bf16, f16, i32, u16 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);        // "f32", "bf16", ...
const char* safetensors_name(DType dtype);  // "F32", "BF16", ...
// Parses "f32"/"float32", "bf16"/"bfloat16", ...; throws UserError otherwise.
DType parse_dtype(std::string_view name);

// bf16 conversions on the CPU, bit-identical to CUDA's __float2bfloat16_rn
// (round to nearest even, NaN kept quiet) and __bfloat162float.
inline uint16_t f32_to_bf16(float value) {
  uint32_t bits;
  __builtin_memcpy(&bits, &value, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
inline float bf16_to_f32(uint16_t value) {
  uint32_t bits = static_cast<uint32_t>(value) << 16;
  float out;
  __builtin_memcpy(&out, &bits, 4);
  return out;
}

// f16 (IEEE binary16) conversions on the CPU, bit-identical to the CUDA cast
// kernels (kernels/cuda/cast.cu), written out on the bits (clang 14 has no
// _Float16 on x86). f32 -> f16 rounds to nearest even; f16 -> f32 is exact.
// NaNs keep their sign and top payload bits, quiet, as Note [Cast NaNs] in
// kernels/cpu/cast.cpp says.
inline uint16_t f32_to_f16(float value) {
  uint32_t bits;
  __builtin_memcpy(&bits, &value, 4);
  auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00 | static_cast<uint16_t>((magnitude & 0x007fffffu) >> 13);  // NaN
  if (magnitude >= 0x47800000u) return sign | 0x7c00;  // >= 2^16 (inf included): inf
  if (magnitude >= 0x38800000u) {                       // >= 2^-14: a normal f16
    // Rebias the exponent (127 -> 15) and round the 23-bit mantissa to 10
    // bits, ties to even; a carry moves into the exponent (up to inf, for
    // [65520, 65536)).
    uint32_t rebiased = magnitude - (112u << 23);
    rebiased += 0x0fffu + ((rebiased >> 13) & 1u);
    return sign | static_cast<uint16_t>(rebiased >> 13);
  }
  if (magnitude <= 0x33000000u) return sign;  // <= 2^-25: zero (2^-25 ties to the even 0)
  // A subnormal counts units of 2^-24: the 24-bit significand shifted right
  // by 126 - exponent (14 to 24), rounded to nearest, ties to even; a carry
  // to 0x400 is the smallest normal, correctly encoded.
  uint32_t shift = 126u - (magnitude >> 23), significand = (magnitude & 0x007fffffu) | 0x00800000u;
  uint32_t units = significand >> shift, rest = significand & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (units & 1u))) units++;
  return sign | static_cast<uint16_t>(units);
}
inline float f16_to_f32(uint16_t value) {
  uint32_t sign = static_cast<uint32_t>(value & 0x8000) << 16;
  uint32_t exponent = (value >> 10) & 0x1f, mantissa = value & 0x03ff, bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, or a NaN with its payload
  } else if (exponent == 0) {                      // zero or subnormal: mantissa x 2^-24, exact
    float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  } else {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  float out;
  __builtin_memcpy(&out, &bits, 4);
  return out;
}

// Rounds through bf16 and back: what a bf16 tensor can hold of `value`.
inline float round_to_bf16(float value) { return bf16_to_f32(f32_to_bf16(value)); }

}  // namespace tandem
