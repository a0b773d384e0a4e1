// CUDA SGD and AdamW: one fused, memory-bound pass; f32 or bf16 params and
// grads, f32 master and state, fp32 math. See Note [Master weights] in
// kernels/optimizer.h. The per-element formulas are those of the CPU twin.
#include "kernels/cuda/common.cuh"
#include "kernels/optimizer.h"

namespace tandem::kernels::cuda {

namespace {

// The weight's true value: the master copy if there is one, else params.
template <typename T>
__device__ __forceinline__ float load_weight(const T* params, const float* master, int64_t i) {
  return master ? master[i] : to_float(params[i]);
}

template <typename T>
__device__ __forceinline__ void store_weight(T* params, float* master, int64_t i, float w) {
  if (master) master[i] = w;
  params[i] = from_float<T>(w);  // round to nearest even for bf16
}

template <typename T>
__global__ void sgd_kernel(T* params, float* master, const T* grads, float* momentum_buf, int64_t n,
                           SgdOptions opts) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float w = load_weight(params, master, i);
    float g = to_float(grads[i]) * opts.grad_scale;
    if (opts.weight_decay != 0.f) g += opts.weight_decay * w;
    float step = g;
    if (opts.momentum != 0.f) {
      float buf = opts.momentum * momentum_buf[i] + g;
      momentum_buf[i] = buf;
      step = opts.nesterov ? g + opts.momentum * buf : buf;
    }
    store_weight(params, master, i, w - opts.lr * step);
  }
}

template <typename T>
__global__ void adamw_kernel(T* params, float* master, const T* grads, float* m, float* v, int64_t n,
                             AdamWOptions opts, AdamWScalars s) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float w = load_weight(params, master, i) * s.decay;
    float g = to_float(grads[i]) * opts.grad_scale;
    float mi = opts.beta1 * m[i] + s.one_minus_beta1 * g;
    float vi = opts.beta2 * v[i] + s.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    float denom = sqrtf(vi) / s.bias_correction2_sqrt + opts.eps;
    store_weight(params, master, i, w - s.step_size * (mi / denom));
  }
}

}  // namespace

void sgd_step(void* params, float* master, const void* grads, float* momentum_buf, int64_t n, DType dtype,
              const SgdOptions& opts, cudaStream_t stream) {
  if (n == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T, sgd_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(
                                      static_cast<T*>(params), master, static_cast<const T*>(grads),
                                      momentum_buf, n, opts));
  CUDA_CHECK_LAUNCH();
}

void adamw_step(void* params, float* master, const void* grads, float* m, float* v, int64_t n, DType dtype,
                const AdamWOptions& opts, cudaStream_t stream) {
  if (n == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T, adamw_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(
                                      static_cast<T*>(params), master, static_cast<const T*>(grads), m, v, n,
                                      opts, adamw_scalars(opts)));
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
