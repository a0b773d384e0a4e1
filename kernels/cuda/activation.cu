// CUDA ReLU and GELU (tanh form), f32 and bf16 storage, fp32 math.
// Memory-bound: one read and one write per element (backward: three reads
// and one write), grid-stride loops.
#include "kernels/activation.h"
#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {

namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

struct Relu {
  __device__ static float f(float x) { return x > 0.f ? x : 0.f; }
  __device__ static float df(float x) { return x > 0.f ? 1.f : 0.f; }
};

struct Gelu {
  __device__ static float f(float x) {
    return 0.5f * x * (1.f + tanhf(kSqrt2OverPi * (x + kGeluCubic * x * x * x)));
  }
  __device__ static float df(float x) {
    float t = tanhf(kSqrt2OverPi * (x + kGeluCubic * x * x * x));
    float du = kSqrt2OverPi * (1.f + 3.f * kGeluCubic * x * x);
    return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * du;
  }
};

template <typename Op, typename T>
__global__ void forward_kernel(T* out, const T* inp, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = from_float<T>(Op::f(to_float(inp[i])));
}

template <typename Op, typename T>
__global__ void backward_kernel(T* dinp, const T* inp, const T* dout, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dinp[i] = from_float<T>(to_float(dout[i]) * Op::df(to_float(inp[i])));
}

template <typename Op>
void launch_forward(void* out, const void* inp, int64_t n, DType dtype, cudaStream_t stream) {
  if (n == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T, forward_kernel<Op, T><<<grid_for(n), kBlock, 0, stream>>>(
                                      static_cast<T*>(out), static_cast<const T*>(inp), n));
  CUDA_CHECK_LAUNCH();
}

template <typename Op>
void launch_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dtype, cudaStream_t stream) {
  if (n == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T, backward_kernel<Op, T><<<grid_for(n), kBlock, 0, stream>>>(
                                      static_cast<T*>(dinp), static_cast<const T*>(inp),
                                      static_cast<const T*>(dout), n));
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void relu_forward(void* out, const void* inp, int64_t n, DType dtype, cudaStream_t stream) {
  launch_forward<Relu>(out, inp, n, dtype, stream);
}
void relu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dtype, cudaStream_t stream) {
  launch_backward<Relu>(dinp, inp, dout, n, dtype, stream);
}
void gelu_forward(void* out, const void* inp, int64_t n, DType dtype, cudaStream_t stream) {
  launch_forward<Gelu>(out, inp, n, dtype, stream);
}
void gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dtype, cudaStream_t stream) {
  launch_backward<Gelu>(dinp, inp, dout, n, dtype, stream);
}

}  // namespace tandem::kernels::cuda
