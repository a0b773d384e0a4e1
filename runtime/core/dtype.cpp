#include "runtime/core/dtype.h"

#include "runtime/core/error.h"

namespace tandem {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::i32: return 4;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::u16: return 2;
  }
  TANDEM_CHECK(false, "unknown dtype");
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::u16: return "u16";
  }
  TANDEM_CHECK(false, "unknown dtype");
}

const char* safetensors_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i32: return "I32";
    case DType::u16: return "U16";
  }
  TANDEM_CHECK(false, "unknown dtype");
}

DType parse_dtype(std::string_view name) {
  if (name == "f32" || name == "float32" || name == "F32") return DType::f32;
  if (name == "bf16" || name == "bfloat16" || name == "BF16") return DType::bf16;
  if (name == "f16" || name == "float16" || name == "F16") return DType::f16;
  if (name == "i32" || name == "int32" || name == "I32") return DType::i32;
  if (name == "u16" || name == "uint16" || name == "U16") return DType::u16;
  throw UserError("unknown dtype '" + std::string(name) + "' (expected f32, bf16, f16, i32 or u16)");
}

}  // namespace tandem
