// CUDA residual add, f32 and bf16 storage, fp32 math. Memory-bound: two
// reads and one write per element, grid-stride loop. No __restrict__: out
// may alias a or b, and each element is read before it is written by the
// same thread, so aliasing is safe.
#include "kernels/cuda/common.cuh"
#include "kernels/residual.h"

namespace tandem::kernels::cuda {

namespace {

template <typename T>
__global__ void residual_add_kernel(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
}

}  // namespace

void residual_add(void* out, const void* a, const void* b, int64_t n, DType dtype, cudaStream_t stream) {
  if (n == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T, residual_add_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(
                                      static_cast<T*>(out), static_cast<const T*>(a),
                                      static_cast<const T*>(b), n));
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
