// CUDA BatchNorm. Activations f32 or bf16 (T); weight, bias and their
// gradients f32 or the activations' dtype (P); statistics always f32. The
// semantics, n = 1 and n = 0 included, are kernels/batchnorm.h's.
//
// Training forward: two launches. stats_kernel, one block per channel, reads
// the channel once and writes save_mean, save_rstd and the running
// statistics; normalize_kernel, a grid of (channel, chunk) blocks, writes out
// from the saved statistics (eval runs the same kernel on the running ones).
//
// Backward: one block per channel does both of its passes (the sums, then
// dinp), since the per-channel means of dout and dout * xhat have nowhere
// else to live: the API takes no workspace.
//
// Note [BatchNorm sums]: each thread adds its share of a channel in double,
// then a fixed shuffle tree (also double) combines the threads. double lets
// the forward take mean and variance in ONE pass from sum(x) and sum(x^2):
// the cancellation in sum(x^2)/n - mean^2 costs log2(1 + mean^2/var) of
// double's 53 bits, so even a channel whose mean is 1000 standard deviations
// from zero keeps ~30 bits, more than the fp32 it is stored in (an fp32
// one-pass formula would keep ~4). Per value that is 2-3 double operations
// against 2-4 bytes of memory traffic, far below the H100/H200's fp64 rate
// (half the fp32 rate), so the kernels stay memory-bound; fp32 Welford would
// cost more instructions for less accuracy. The CPU twin also sums in
// double, so the two agree to the last fp32 bit or so.
//
// Determinism: no atomics. Which thread adds which value and the tree order
// depend only on (N, C, HW), so every result is bitwise the same run to run.
//
// One block per channel leaves SMs idle when C is below the SM count (a
// stem with C = 64 on 132 SMs) at 1024 threads per block; splitting a
// channel over blocks would need a workspace or atomics. A channel is N
// runs of HW values, C * HW apart, so a small HW (1 for BatchNorm1d) gives
// correct but uncoalesced reads.
#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/batchnorm.h"
#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;       // per channel block (stats, backward)
constexpr int kNormalizeThreads = 256;  // per block of normalize_kernel
constexpr int kValuesPerThread = 8;     // normalize_kernel: values per thread and chunk
constexpr int64_t kMaxGridY = 65535;

// The values of channel c in an (N, C, HW) tensor that one thread visits:
// flat indices j = n * HW + i from `first` in steps of `stride`, at offsets
// (n * C + c) * HW + i. A step carries i over into n instead of dividing
// (64-bit division is a long software routine on the GPU).
struct ChannelWalk {
  int64_t j, i, offset;                      // where the walk is
  int64_t stride, step_i, step_offset, wrap, HW;

  __device__ ChannelWalk(int64_t first, int64_t stride_, int64_t c, int64_t C, int64_t HW_)
      : j(first), stride(stride_), HW(HW_) {
    int64_t n = first / HW;
    i = first - n * HW;
    offset = (n * C + c) * HW + i;
    int64_t dn = stride / HW;
    step_i = stride - dn * HW;
    step_offset = dn * C * HW + step_i;
    wrap = C * HW - HW;  // i -= HW, n += 1
  }
  __device__ void next() {
    j += stride;
    i += step_i;
    offset += step_offset;
    if (i >= HW) {
      i -= HW;
      offset += wrap;
    }
  }
};

// Runs use(offset, load(offset)) over the walk's values, in walk order.
// Full rounds of kUnroll values load all of them before using any: the
// loads of a round are in flight together (one at a time, as a plain loop
// with an exit test per value compiles, would leave most of the memory
// bandwidth idle). A round's loads precede its stores, so `use` may store
// to the offset it was given even when that aliases what `load` reads.
constexpr int kUnroll = 4;

template <typename Load, typename Use>
__device__ __forceinline__ void for_each_value(ChannelWalk w, int64_t count, Load load, Use use) {
  using V = decltype(load(int64_t{}));
  while (w.j + (kUnroll - 1) * w.stride < count) {
    int64_t offset[kUnroll];
    V value[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) offset[u] = w.offset, w.next();
#pragma unroll
    for (int u = 0; u < kUnroll; u++) value[u] = load(offset[u]);
#pragma unroll
    for (int u = 0; u < kUnroll; u++) use(offset[u], value[u]);
  }
  for (; w.j < count; w.next()) use(w.offset, load(w.offset));
}

__device__ __forceinline__ double warp_sum_double(double v) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Block sums of a and b (blockDim.x a multiple of 32); every thread gets the
// totals. The xor tree gives every lane the same bits (each level adds the
// same two values, only swapped), in a fixed order. Once per kernel: there
// is no barrier before the shared arrays are written.
__device__ __forceinline__ void block_sum2(double& a, double& b) {
  __shared__ double part_a[kMaxThreads / kWarp], part_b[kMaxThreads / kWarp];
  int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  a = warp_sum_double(a);
  b = warp_sum_double(b);
  if (lane == 0) part_a[warp] = a, part_b[warp] = b;
  __syncthreads();
  a = warp_sum_double(lane < warps ? part_a[lane] : 0.0);
  b = warp_sum_double(lane < warps ? part_b[lane] : 0.0);
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    stats_kernel(float* __restrict__ save_mean, float* __restrict__ save_rstd, float* __restrict__ running_mean,
                 float* __restrict__ running_var, const T* __restrict__ inp, int64_t N, int64_t C, int64_t HW,
                 float eps, float momentum) {
  const int64_t c = blockIdx.x, count = N * HW;
  if (count == 0) {  // an empty batch: nothing to learn from (kernels/batchnorm.h)
    if (threadIdx.x == 0) {
      save_mean[c] = 0.f;
      save_rstd[c] = static_cast<float>(1.0 / sqrt(double(eps)));
    }
    return;
  }
  double sum = 0, sum_sq = 0;  // Note [BatchNorm sums]
  for_each_value(
      ChannelWalk(threadIdx.x, blockDim.x, c, C, HW), count, [&](int64_t k) { return to_float(inp[k]); },
      [&](int64_t, float v) {
        double x = v;
        sum += x;
        sum_sq += x * x;  // exact product: x has 24 significant bits
      });
  block_sum2(sum, sum_sq);
  if (threadIdx.x != 0) return;

  double m = sum / double(count);
  double sq = fmax(sum_sq - m * sum, 0.0);  // sum (x - m)^2; rounding must not make it negative
  save_mean[c] = static_cast<float>(m);
  save_rstd[c] = static_cast<float>(1.0 / sqrt(sq / double(count) + double(eps)));
  // The CPU's update, operation for operation (no contraction into fma), so
  // momentum 0 keeps the running statistics and momentum 1 replaces them.
  double keep = 1.0 - double(momentum);
  running_mean[c] = static_cast<float>(__dadd_rn(__dmul_rn(keep, running_mean[c]), __dmul_rn(momentum, m)));
  if (count > 1)  // one value has no unbiased variance: running_var stays
    running_var[c] = static_cast<float>(
        __dadd_rn(__dmul_rn(keep, running_var[c]), __dmul_rn(momentum, sq / double(count - 1))));
}

// out = (inp - mean) * rstd * weight + bias for the values of channel
// blockIdx.x, in chunks blockIdx.y, blockIdx.y + gridDim.y, ... With rstd
// null, rstd = 1 / sqrt(var + eps) (eval). The roundings are spelled out as
// the CPU twin's, so equal statistics give the CPU's output bit for bit (in
// particular out = bias exactly when n = 1). out and inp are not
// __restrict__: eval may run in place, each value read before it is written
// by the same thread.
template <typename T, typename P>
__global__ void __launch_bounds__(kNormalizeThreads)
    normalize_kernel(T* out, const T* inp, const P* __restrict__ weight, const P* __restrict__ bias,
                     const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ var,
                     float eps, int64_t N, int64_t C, int64_t HW) {
  const int64_t c = blockIdx.x, count = N * HW;
  float m = mean[c];
  float s = rstd ? rstd[c] : static_cast<float>(1.0 / sqrt(double(var[c]) + double(eps)));
  float wt = to_float(weight[c]), b = to_float(bias[c]);
  int64_t first = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  for_each_value(
      ChannelWalk(first, int64_t(gridDim.y) * blockDim.x, c, C, HW), count,
      [&](int64_t k) { return to_float(inp[k]); },
      [&](int64_t k, float x) { out[k] = from_float<T>(__fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(x, m), s), wt), b)); });
}

// With xhat = (x - mean) * rstd over the n values of channel blockIdx.x:
//   dinp = weight * rstd * (dout - mean(dout) - xhat * mean(dout * xhat))
//   dweight += sum(dout * xhat),  dbias += sum(dout)
// Pass 1 sums (Note [BatchNorm sums]); the barrier inside block_sum2 ends
// every read of pass 1 before pass 2 writes, and in pass 2 each thread reads
// dout[k] before it writes dinp[k], so dinp may alias dout (not
// __restrict__). Roundings spelled out as the CPU twin's.
template <typename T, typename P>
__global__ void __launch_bounds__(kMaxThreads)
    backward_kernel(T* dinp, P* __restrict__ dweight, P* __restrict__ dbias, const T* dout,
                    const T* __restrict__ inp, const P* __restrict__ weight, const float* __restrict__ save_mean,
                    const float* __restrict__ save_rstd, int64_t N, int64_t C, int64_t HW) {
  const int64_t c = blockIdx.x, count = N * HW;  // count >= 1 (the host skips empty batches)
  const float m = save_mean[c], s = save_rstd[c];
  const ChannelWalk walk(threadIdx.x, blockDim.x, c, C, HW);
  // (dout, inp) at offset k.
  auto load = [&](int64_t k) { return make_float2(to_float(dout[k]), to_float(inp[k])); };
  double dy_sum = 0, dyx_sum = 0;
  for_each_value(walk, count, load, [&](int64_t, float2 v) {
    float xhat = __fmul_rn(__fsub_rn(v.y, m), s);
    dy_sum += v.x;
    dyx_sum += double(v.x) * xhat;  // exact product
  });
  block_sum2(dy_sum, dyx_sum);
  if (threadIdx.x == 0) {
    dbias[c] = from_float<P>(__fadd_rn(to_float(dbias[c]), static_cast<float>(dy_sum)));
    dweight[c] = from_float<P>(__fadd_rn(to_float(dweight[c]), static_cast<float>(dyx_sum)));
  }
  const float dy_mean = static_cast<float>(dy_sum / double(count));
  const float dyx_mean = static_cast<float>(dyx_sum / double(count));
  const float ws = __fmul_rn(to_float(weight[c]), s);
  for_each_value(walk, count, load, [&](int64_t k, float2 v) {
    float xhat = __fmul_rn(__fsub_rn(v.y, m), s);
    dinp[k] = from_float<T>(__fmul_rn(ws, __fsub_rn(__fsub_rn(v.x, dy_mean), __fmul_rn(xhat, dyx_mean))));
  });
}

// Threads for a one-block-per-channel kernel: a warp per 32 values up to
// 1024. A function of the channel's size only, so the reduction order (and
// the bits) never depend on the device.
int channel_threads(int64_t count) {
  int64_t warps = std::clamp<int64_t>((count + kWarp - 1) / kWarp, 1, kMaxThreads / kWarp);
  return static_cast<int>(warps * kWarp);
}

// normalize_kernel's grid: a block per channel and chunk of
// kNormalizeThreads * kValuesPerThread values, at most kMaxGridY chunks
// (the blocks then loop).
dim3 normalize_grid(int64_t C, int64_t count) {
  int64_t chunks = (count + kNormalizeThreads * kValuesPerThread - 1) / (kNormalizeThreads * kValuesPerThread);
  return dim3(static_cast<unsigned>(C), static_cast<unsigned>(std::min(chunks, kMaxGridY)));
}

void check_sizes(int64_t N, int64_t C, int64_t HW) {
  TANDEM_CHECK(N >= 0 && C >= 0 && HW >= 1, "batchnorm: bad sizes N=" + std::to_string(N) + " C=" +
                                                std::to_string(C) + " HW=" + std::to_string(HW));
  TANDEM_CHECK(C <= INT32_MAX, "batchnorm: C must be below 2^31 (one block per channel), got " + std::to_string(C));
}

// Runs launch(T{}, P{}) with the activation type T and the parameter type
// P: (f32, f32), (bf16, bf16) or (bf16, f32), the pairs the header allows.
template <typename Launch>
void dispatch(DType dtype, DType param_dtype, Launch&& launch) {
  if (dtype == DType::f32 && param_dtype == DType::f32) {
    launch(float{}, float{});
  } else if (dtype == DType::bf16 && param_dtype == DType::bf16) {
    launch(bf16{}, bf16{});
  } else if (dtype == DType::bf16 && param_dtype == DType::f32) {
    launch(bf16{}, float{});
  } else {
    TANDEM_CHECK(false, std::string("batchnorm CUDA kernel: unsupported dtypes ") + dtype_name(dtype) +
                            " (activations) and " + dtype_name(param_dtype) + " (parameters)");
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void batchnorm_forward_train(void* out, float* save_mean, float* save_rstd, float* running_mean, float* running_var,
                             const void* inp, const void* weight, const void* bias, int64_t N, int64_t C, int64_t HW,
                             const BatchNormOptions& options, DType dtype, DType param_dtype, cudaStream_t stream) {
  check_sizes(N, C, HW);
  if (C == 0) return;
  const int64_t count = N * HW;
  dispatch(dtype, param_dtype, [&](auto t, auto) {
    using T = decltype(t);
    stats_kernel<T><<<static_cast<unsigned>(C), channel_threads(count), 0, stream>>>(
        save_mean, save_rstd, running_mean, running_var, static_cast<const T*>(inp), N, C, HW, options.eps,
        options.momentum);
  });
  if (count == 0) return;
  dispatch(dtype, param_dtype, [&](auto t, auto p) {
    using T = decltype(t);
    using P = decltype(p);
    normalize_kernel<T, P><<<normalize_grid(C, count), kNormalizeThreads, 0, stream>>>(
        static_cast<T*>(out), static_cast<const T*>(inp), static_cast<const P*>(weight),
        static_cast<const P*>(bias), save_mean, save_rstd, nullptr, 0.f, N, C, HW);
  });
}

void batchnorm_forward_eval(void* out, const void* inp, const void* weight, const void* bias,
                            const float* running_mean, const float* running_var, int64_t N, int64_t C, int64_t HW,
                            const BatchNormOptions& options, DType dtype, DType param_dtype, cudaStream_t stream) {
  check_sizes(N, C, HW);
  const int64_t count = N * HW;
  if (C == 0 || count == 0) return;
  dispatch(dtype, param_dtype, [&](auto t, auto p) {
    using T = decltype(t);
    using P = decltype(p);
    normalize_kernel<T, P><<<normalize_grid(C, count), kNormalizeThreads, 0, stream>>>(
        static_cast<T*>(out), static_cast<const T*>(inp), static_cast<const P*>(weight),
        static_cast<const P*>(bias), running_mean, nullptr, running_var, options.eps, N, C, HW);
  });
}

void batchnorm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                        const void* weight, const float* save_mean, const float* save_rstd, int64_t N, int64_t C,
                        int64_t HW, DType dtype, DType param_dtype, cudaStream_t stream) {
  check_sizes(N, C, HW);
  const int64_t count = N * HW;
  if (C == 0 || count == 0) return;  // no values: no gradient to add, no dinp to write
  dispatch(dtype, param_dtype, [&](auto t, auto p) {
    using T = decltype(t);
    using P = decltype(p);
    backward_kernel<T, P><<<static_cast<unsigned>(C), channel_threads(count), 0, stream>>>(
        static_cast<T*>(dinp), static_cast<P*>(dweight), static_cast<P*>(dbias), static_cast<const T*>(dout),
        static_cast<const T*>(inp), static_cast<const P*>(weight), save_mean, save_rstd, N, C, HW);
  });
}

}  // namespace tandem::kernels::cuda
