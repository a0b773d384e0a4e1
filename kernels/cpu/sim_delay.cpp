// CPU reference for the simulated network's device work. See kernels/sim_delay.h.
#include "kernels/sim_delay.h"

#include <chrono>
#include <cstring>
#include <thread>

namespace tandem::kernels::cpu {

void sim_delay(int64_t ns) { std::this_thread::sleep_for(std::chrono::nanoseconds(ns)); }

void scale(void* x, int64_t n, DType dtype, int64_t factor) {
  switch (dtype) {
    case DType::f32: {
      float* p = static_cast<float*>(x);
      float f = static_cast<float>(factor);
      for (int64_t i = 0; i < n; i++) p[i] *= f;
      return;
    }
    case DType::bf16: {
      uint16_t* p = static_cast<uint16_t*>(x);
      float f = static_cast<float>(factor);
      for (int64_t i = 0; i < n; i++) p[i] = f32_to_bf16(bf16_to_f32(p[i]) * f);
      return;
    }
    case DType::i32: {
      int32_t* p = static_cast<int32_t*>(x);
      // Unsigned arithmetic wraps without undefined behaviour, as the GPU's does.
      uint32_t f = static_cast<uint32_t>(factor);
      for (int64_t i = 0; i < n; i++) p[i] = static_cast<int32_t>(static_cast<uint32_t>(p[i]) * f);
      return;
    }
    default: TANDEM_CHECK(false, std::string("scale: unsupported dtype ") + dtype_name(dtype));
  }
}

void copy_bytes(void* dst, const void* src, size_t bytes) { std::memmove(dst, src, bytes); }

}  // namespace tandem::kernels::cpu
