// Element types. Storage types only: arithmetic is always fp32 or wider.
#pragma once

#include <cstddef>
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
// Rounds through bf16 and back: what a bf16 tensor can hold of `value`.
inline float round_to_bf16(float value) { return bf16_to_f32(f32_to_bf16(value)); }

}  // namespace tandem
