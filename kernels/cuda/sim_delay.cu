// CUDA side of the simulated network: the delay kernel (Note [Delay on a
// stream] in kernels/sim_delay.h), the in-place scale, and an async copy.
#include "kernels/cuda/common.cuh"
#include "kernels/sim_delay.h"

namespace tandem::kernels::cuda {

namespace {

// Between two reads of the clock: short against the delays we simulate
// (tens of microseconds and up), long enough that the spinning thread
// issues next to nothing.
constexpr unsigned int kNapNs = 200;

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void delay_kernel(uint64_t ns) {
  uint64_t start = global_ns();
  while (global_ns() - start < ns) {
#if __CUDA_ARCH__ >= 700  // __nanosleep is Volta and later; older parts spin
    __nanosleep(kNapNs);
#endif
  }
}

template <typename T>
__global__ void scale_kernel(T* x, int64_t n, float factor) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    x[i] = from_float<T>(to_float(x[i]) * factor);
}

// Unsigned arithmetic wraps as the CPU twin's does.
__global__ void scale_i32_kernel(uint32_t* x, int64_t n, uint32_t factor) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    x[i] *= factor;
}

}  // namespace

void sim_delay(int64_t ns, cudaStream_t stream) {
  if (ns <= 0) return;
  delay_kernel<<<1, 1, 0, stream>>>(static_cast<uint64_t>(ns));
  CUDA_CHECK_LAUNCH();
}

void scale(void* x, int64_t n, DType dtype, int64_t factor, cudaStream_t stream) {
  if (n == 0) return;
  if (dtype == DType::i32) {
    scale_i32_kernel<<<grid_for(n), kBlock, 0, stream>>>(static_cast<uint32_t*>(x), n,
                                                         static_cast<uint32_t>(factor));
  } else {
    float f = static_cast<float>(factor);
    TANDEM_DISPATCH_FLOAT(dtype, T, scale_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(static_cast<T*>(x), n, f));
  }
  CUDA_CHECK_LAUNCH();
}

void copy_bytes(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
}

}  // namespace tandem::kernels::cuda
