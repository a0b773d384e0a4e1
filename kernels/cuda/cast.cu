// CUDA f32 <-> bf16 and f32 <-> f16 conversion. Memory-bound, grid-stride
// loops.
//
// f32 -> bf16 is done on the bits, as f32_to_bf16 in runtime/core/dtype.h
// does, rather than with __float2bfloat16_rn: for every non-NaN input the two
// are the same round to nearest even (denormals kept, overflow to inf), but
// for NaN the hardware conversion may return a canonical NaN while the CPU
// keeps the sign and payload and sets the quiet bit. Doing the CPU's bits
// makes a cast bitwise reproducible across devices, NaNs included.
//
// f16 goes through __float2half_rn / __half2float, the IEEE conversions
// (round to nearest even, subnormals kept, overflow to inf; exact widening),
// except for NaNs, which follow the CPU's rule (Note [Cast NaNs] in
// kernels/cpu/cast.cpp) on the bits.
#include <cuda_fp16.h>

#include "kernels/cast.h"
#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {

namespace {

// Keep in step with f32_to_bf16 in runtime/core/dtype.h (host only).
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float value) {
  uint32_t bits = __float_as_uint(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // NaN: quiet
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(bits >> 16);
}

__global__ void f32_to_bf16_kernel(uint16_t* out, const float* inp, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = f32_to_bf16_bits(inp[i]);
}

// Exact: bf16 is the top half of an f32.
__global__ void bf16_to_f32_kernel(float* out, const uint16_t* inp, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = __uint_as_float(static_cast<uint32_t>(inp[i]) << 16);
}

// Keep in step with f32_to_f16 and f16_to_f32 in kernels/cpu/cast.cpp.
__device__ __forceinline__ uint16_t f32_to_f16_bits(float value) {
  uint32_t bits = __float_as_uint(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u)  // NaN: sign, quiet bit, top of the payload
    return static_cast<uint16_t>(((bits >> 16) & 0x8000u) | 0x7e00u | ((bits & 0x007fffffu) >> 13));
  return __half_as_ushort(__float2half_rn(value));
}

__device__ __forceinline__ float f16_to_f32(uint16_t value) {
  if ((value & 0x7fffu) > 0x7c00u)  // NaN: sign and payload shifted into place
    return __uint_as_float((static_cast<uint32_t>(value & 0x8000u) << 16) | 0x7f800000u |
                           (static_cast<uint32_t>(value & 0x03ffu) << 13));
  return __half2float(__ushort_as_half(value));
}

__global__ void f32_to_f16_kernel(uint16_t* out, const float* inp, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = f32_to_f16_bits(inp[i]);
}

__global__ void f16_to_f32_kernel(float* out, const uint16_t* inp, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = f16_to_f32(inp[i]);
}

}  // namespace

void cast(void* out, DType out_dtype, const void* inp, DType in_dtype, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  if (out_dtype == DType::bf16 && in_dtype == DType::f32) {
    f32_to_bf16_kernel<<<grid_for(n), kBlock, 0, stream>>>(static_cast<uint16_t*>(out),
                                                           static_cast<const float*>(inp), n);
  } else if (out_dtype == DType::f32 && in_dtype == DType::bf16) {
    bf16_to_f32_kernel<<<grid_for(n), kBlock, 0, stream>>>(static_cast<float*>(out),
                                                           static_cast<const uint16_t*>(inp), n);
  } else if (out_dtype == DType::f16 && in_dtype == DType::f32) {
    f32_to_f16_kernel<<<grid_for(n), kBlock, 0, stream>>>(static_cast<uint16_t*>(out),
                                                          static_cast<const float*>(inp), n);
  } else if (out_dtype == DType::f32 && in_dtype == DType::f16) {
    f16_to_f32_kernel<<<grid_for(n), kBlock, 0, stream>>>(static_cast<float*>(out),
                                                          static_cast<const uint16_t*>(inp), n);
  } else {
    TANDEM_CHECK(false, std::string("cuda::cast: no conversion from ") + dtype_name(in_dtype) + " to " +
                            dtype_name(out_dtype));
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
