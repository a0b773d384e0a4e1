// Helpers for kernels/cuda/*.cu: element load/store for f32 and bf16, and
// the dtype switch. Arithmetic is always fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "runtime/core/cuda_check.h"
#include "runtime/core/dtype.h"

namespace tandem::kernels::cuda {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

inline unsigned int ceil_div(int64_t n, int64_t d) { return static_cast<unsigned int>((n + d - 1) / d); }

// Threads per block for 1-D elementwise kernels, and a grid that covers n
// elements with a grid-stride loop (so huge n needs no huge grid).
constexpr int kBlock = 256;
inline unsigned int grid_for(int64_t n) {
  int64_t blocks = (n + kBlock - 1) / kBlock;
  constexpr int64_t kMaxBlocks = 65535;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

// Full-warp sum, then block sum through shared memory (blockDim.x a multiple
// of 32, at most 1024). Every thread returns the block's total. The order of
// additions is fixed, so results are bitwise repeatable.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : 0.f;
  return warp_sum(v);
}

}  // namespace tandem::kernels::cuda

// Runs `body` with `T` bound to float or bf16 according to `dtype`.
#define TANDEM_DISPATCH_FLOAT(dtype, T, ...)                                       \
  do {                                                                             \
    if ((dtype) == ::tandem::DType::f32) {                                         \
      using T = float;                                                             \
      __VA_ARGS__;                                                                 \
    } else if ((dtype) == ::tandem::DType::bf16) {                                 \
      using T = ::tandem::kernels::cuda::bf16;                                     \
      __VA_ARGS__;                                                                 \
    } else {                                                                       \
      TANDEM_CHECK(false, std::string("CUDA kernel: unsupported dtype ") +         \
                              ::tandem::dtype_name(dtype));                        \
    }                                                                              \
  } while (0)
