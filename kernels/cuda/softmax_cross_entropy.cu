// CUDA fused softmax + cross-entropy, f32 and bf16 logits, fp32 math, f32
// losses. One block per row of logits.
//
// Each thread walks its share of the row once, keeping an online softmax
// normaliser (running max m and sum of exp(x - m)); the block then merges
// the per-thread normalisers. So the forward reads the logits once and the
// backward twice (normaliser, then gradient), whatever V is.
//
// Note [In-place dlogits]: the backward may write dlogits over the logits.
// Every thread reads exactly the elements i = tid, tid + blockDim, ... of its
// row in the first pass and writes exactly those same elements in the second
// pass, each after reading it; so no thread ever writes an element that
// another thread reads. The block merge between the passes also holds a
// __syncthreads, so all reads of the row are done before any write anyway.
#include <climits>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/softmax_cross_entropy.h"

namespace tandem::kernels::cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 512;  // per row; a 50257-wide row is ~100 elements per thread

// An online softmax normaliser: max m of the elements seen and the sum of
// exp(x - m) over them. {-inf, 0} is the empty set.
struct Normaliser {
  float max, sum;
};

__device__ __forceinline__ Normaliser add(Normaliser z, float x) {
  if (x > z.max) return {x, z.sum * expf(z.max - x) + 1.f};  // exp(-inf) = 0 covers the empty set
  // x == -inf (a masked logit) adds nothing; skipping it avoids exp(-inf - -inf) = NaN.
  return {z.max, x == -INFINITY ? z.sum : z.sum + expf(x - z.max)};
}

// Commutative bit for bit (fmaxf, two products, one addition; the _rn
// intrinsics keep the compiler from fusing one product into an FMA, which
// would not be), so both lanes of a shuffle pair agree and every thread ends
// with the same normaliser.
__device__ __forceinline__ Normaliser merge(Normaliser a, Normaliser b) {
  float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.f};
  return {m, __fadd_rn(__fmul_rn(a.sum, expf(a.max - m)), __fmul_rn(b.sum, expf(b.max - m)))};
}

__device__ __forceinline__ Normaliser warp_merge(Normaliser z) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    Normaliser other{__shfl_xor_sync(0xffffffffu, z.max, offset), __shfl_xor_sync(0xffffffffu, z.sum, offset)};
    z = merge(z, other);
  }
  return z;
}

// blockDim.x a multiple of 32, at most 1024; every thread returns the
// block's normaliser. Fixed merge order, so bitwise repeatable.
__device__ __forceinline__ Normaliser block_merge(Normaliser z) {
  __shared__ float part_max[kWarp], part_sum[kWarp];
  int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  z = warp_merge(z);
  __syncthreads();  // the partials may still be read by a previous call
  if (lane == 0) {
    part_max[warp] = z.max;
    part_sum[warp] = z.sum;
  }
  __syncthreads();
  z = lane < warps ? Normaliser{part_max[lane], part_sum[lane]} : Normaliser{-INFINITY, 0.f};
  return warp_merge(z);
}

template <typename T>
__device__ __forceinline__ Normaliser row_normaliser(const T* x, int V) {
  Normaliser z{-INFINITY, 0.f};
  for (int i = threadIdx.x; i < V; i += blockDim.x) z = add(z, to_float(x[i]));
  return block_merge(z);
}

template <typename T>
__global__ void forward_kernel(float* __restrict__ losses, const T* __restrict__ logits,
                               const int32_t* __restrict__ targets, int V) {
  int64_t row = blockIdx.x;
  int t = targets[row];
  if (t < 0) {  // ignored row; uniform across the block, so no barrier is skipped by half of it
    if (threadIdx.x == 0) losses[row] = 0.f;
    return;
  }
  const T* x = logits + row * V;
  Normaliser z = row_normaliser(x, V);
  if (threadIdx.x == 0)  // t >= V breaks the precondition: NaN, and no out-of-bounds read
    losses[row] = t < V ? (z.max - to_float(x[t])) + logf(z.sum) : NAN;
}

// dlogits and logits may alias: Note [In-place dlogits]; hence no __restrict__.
template <typename T>
__global__ void backward_kernel(T* dlogits, const T* logits, const int32_t* __restrict__ targets, float dloss,
                                int V) {
  int64_t row = blockIdx.x;
  int t = targets[row];
  T* dx = dlogits + row * V;
  if (t < 0 || t >= V) {  // ignored row (0), or a broken precondition (NaN); uniform across the block
    T fill = from_float<T>(t < 0 ? 0.f : NAN);
    for (int i = threadIdx.x; i < V; i += blockDim.x) dx[i] = fill;
    return;
  }
  const T* x = logits + row * V;
  Normaliser z = row_normaliser(x, V);
  float inv_sum = 1.f / z.sum;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    float p = expf(to_float(x[i]) - z.max) * inv_sum;
    dx[i] = from_float<T>((p - (i == t ? 1.f : 0.f)) * dloss);
  }
}

void check_sizes(int64_t N, int64_t V) {
  TANDEM_CHECK(V >= 1 && V <= INT_MAX, "softmax_cross_entropy: V must be in [1, INT_MAX], got " + std::to_string(V));
  TANDEM_CHECK(N >= 0 && N <= INT_MAX, "softmax_cross_entropy: N must be in [0, INT_MAX], got " + std::to_string(N));
}

// Threads per row: enough warps to cover V, at most kMaxThreads.
unsigned int threads_for(int64_t V) {
  int64_t warps = (V + kWarp - 1) / kWarp;
  int64_t threads = warps * kWarp;
  return static_cast<unsigned int>(threads < kMaxThreads ? threads : kMaxThreads);
}

}  // namespace

void softmax_cross_entropy_forward(float* losses, const void* logits, const int32_t* targets, int64_t N, int64_t V,
                                   DType dtype, cudaStream_t stream) {
  check_sizes(N, V);
  if (N == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T,
                        forward_kernel<T><<<static_cast<unsigned int>(N), threads_for(V), 0, stream>>>(
                            losses, static_cast<const T*>(logits), targets, static_cast<int>(V)));
  CUDA_CHECK_LAUNCH();
}

void softmax_cross_entropy_backward(void* dlogits, const void* logits, const int32_t* targets, float dloss,
                                    int64_t N, int64_t V, DType dtype, cudaStream_t stream) {
  check_sizes(N, V);
  if (N == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T,
                        backward_kernel<T><<<static_cast<unsigned int>(N), threads_for(V), 0, stream>>>(
                            static_cast<T*>(dlogits), static_cast<const T*>(logits), targets, dloss,
                            static_cast<int>(V)));
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
