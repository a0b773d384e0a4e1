// CUDA LayerNorm, f32 and bf16 storage, fp32 math; mean and rstd are f32.
//
// Forward and the dinp part of the backward: one warp per row. A row of C
// channels (768..8192 in practice) is a few loads per lane; the row sums are
// warp shuffles, so no shared memory and no __syncthreads. Rows are
// independent, so any C (1 included) and any N work without special cases.
//
// residual_layernorm_forward: the same one warp per row. The warp first
// stores its row of residual = a + b, then runs the forward's own row code
// (forward_row, Note [One forward row]) over the row it just stored, which
// is still in L1/L2: the unfused pair's results bit for bit, minus one read
// of the residual from DRAM and one launch.
//
// dweight/dbias: a column kernel. Each block owns a narrow strip of columns
// outright; its threads each sum a fixed set of rows of one column, and the
// partial sums of a column are combined through shared memory in a fixed
// order. No atomics and no workspace, so the result is bitwise the same run
// to run, and the kernel adds to dweight/dbias exactly once per column.
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/layernorm.h"

namespace tandem::kernels::cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // warps per block in the row kernels
constexpr int kRowBlock = kRowsPerBlock * kWarp;
constexpr int kColWarps = 32;     // warps per block in the column kernel
constexpr int kColBlock = kColWarps * kWarp;
constexpr int kSectorBytes = 32;  // a DRAM/L2 sector

// Note [One forward row]: the forward's arithmetic for one row, shared by
// forward_kernel and residual_forward_kernel so that the fused kernel cannot
// drift from layernorm_forward. Its multiply-adds are spelled out
// (__fmul_rn, __fmaf_rn; the contractions nvcc chose for the original code)
// so that the compiler cannot contract them differently in the two kernels;
// the sums are warp_sum's fixed shuffle order. Lane `lane` reads x[c] and
// writes y[c] only for its channels c = lane, lane + 32, ...; x is read
// three times (the later passes from L1).
template <typename T>
__device__ __forceinline__ void forward_row(T* y, float* mean, float* rstd, const T* x, const T* weight,
                                            const T* bias, int C, float eps, int lane) {
  float sum = 0.f;
  for (int c = lane; c < C; c += kWarp) sum += to_float(x[c]);
  float m = warp_sum(sum) / C;
  // Second pass over the row (from L1) for the variance: no cancellation.
  float sq = 0.f;
  for (int c = lane; c < C; c += kWarp) {
    float d = to_float(x[c]) - m;
    sq = __fmaf_rn(d, d, sq);
  }
  float s = rsqrtf(warp_sum(sq) / C + eps);
  for (int c = lane; c < C; c += kWarp)
    y[c] = from_float<T>(__fmaf_rn(__fmul_rn(to_float(x[c]) - m, s), to_float(weight[c]), to_float(bias[c])));
  if (lane == 0) {
    *mean = m;
    *rstd = s;
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowBlock)
    forward_kernel(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                   const T* __restrict__ inp, const T* __restrict__ weight, const T* __restrict__ bias,
                   int64_t N, int C, float eps) {
  int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  int lane = threadIdx.x % kWarp;
  if (row >= N) return;  // the whole warp leaves together
  forward_row(out + row * C, mean + row, rstd + row, inp + row * C, weight, bias, C, eps, lane);
}

// residual = a + b for the row, rounded as residual_add_kernel rounds it
// (kernels/cuda/residual.cu), then forward_row over the stored residual, so
// in bf16 the normalization sees the rounded values, as the unfused pair's
// would. residual, a and b are not __restrict__: residual may alias a or b,
// and the residual row is read back after it is written in this kernel
// (which also keeps those loads off the read-only path). Each element of a
// and b is read by the lane that then writes that element of residual.
template <typename T>
__global__ void __launch_bounds__(kRowBlock)
    residual_forward_kernel(T* residual, T* __restrict__ out, float* __restrict__ mean,
                            float* __restrict__ rstd, const T* a, const T* b, const T* __restrict__ weight,
                            const T* __restrict__ bias, int64_t N, int C, float eps) {
  int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  int lane = threadIdx.x % kWarp;
  if (row >= N) return;  // the whole warp leaves together
  T* r = residual + row * C;
  const T* ar = a + row * C;
  const T* br = b + row * C;
  for (int c = lane; c < C; c += kWarp) r[c] = from_float<T>(to_float(ar[c]) + to_float(br[c]));
  // forward_row reads back only the lane's own elements today; the barrier
  // (which orders the warp's global memory accesses) keeps this kernel right
  // should it ever read the row in another layout.
  __syncwarp();
  forward_row(out + row * C, mean + row, rstd + row, static_cast<const T*>(r), weight, bias, C, eps, lane);
}

// dinp for one row per warp. dinp and dout are not __restrict__: they may
// alias. That is safe because each lane reads dout[c] and writes dinp[c] only
// for its own channels c, and reads them before writing them.
template <typename T>
__global__ void __launch_bounds__(kRowBlock)
    backward_dinp_kernel(T* dinp, const T* dout, const T* __restrict__ inp, const T* __restrict__ weight,
                         const float* __restrict__ mean, const float* __restrict__ rstd, int64_t N, int C) {
  int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  int lane = threadIdx.x % kWarp;
  if (row >= N) return;
  const T* x = inp + row * C;
  const T* dy = dout + row * C;
  T* dx = dinp + row * C;
  float m = mean[row], s = rstd[row];

  float g_sum = 0.f, gx_sum = 0.f;
  for (int c = lane; c < C; c += kWarp) {
    float xhat = (to_float(x[c]) - m) * s;
    // __fmul_rn: g rounded exactly as in the second loop below. If the
    // compiler fused the product there into an FMA with -g_mean, a row whose
    // gradient is 0 (C = 1, say) would come out as rounding noise * rstd.
    float g = __fmul_rn(to_float(weight[c]), to_float(dy[c]));
    g_sum += g;
    gx_sum += g * xhat;
  }
  float g_mean = warp_sum(g_sum) / C;
  float gx_mean = warp_sum(gx_sum) / C;
  for (int c = lane; c < C; c += kWarp) {
    float xhat = (to_float(x[c]) - m) * s;
    float g = __fmul_rn(to_float(weight[c]), to_float(dy[c]));
    dx[c] = from_float<T>((g - g_mean - xhat * gx_mean) * s);
  }
}

// dweight += sum_n dout * xhat and dbias += sum_n dout for the strip of
// columns that this block owns. A strip is one 32-byte sector of a row (8
// f32 or 16 bf16 columns): narrow, so that even C = 768 gives ~100 blocks to
// spread the N x C reads over the SMs, yet every sector fetched is used
// whole. Grid: ceil(C / Strip<T>) blocks of kColBlock threads.
template <typename T>
struct Strip {
  static constexpr int kColumns = kSectorBytes / static_cast<int>(sizeof(T));
  static constexpr int kRowsPerWarp = kWarp / kColumns;    // a warp reads this many rows at once
  static constexpr int kGroups = kColWarps * kRowsPerWarp;  // row groups: group g sums rows g, g + kGroups, ...
};

template <typename T>
__global__ void __launch_bounds__(kColBlock)
    backward_params_kernel(T* __restrict__ dweight, T* __restrict__ dbias, const T* __restrict__ dout,
                           const T* __restrict__ inp, const float* __restrict__ mean,
                           const float* __restrict__ rstd, int64_t N, int C) {
  constexpr int kColumns = Strip<T>::kColumns, kGroups = Strip<T>::kGroups;
  // [row group][column]; the +1 (kColumns + 1 is odd) keeps the column-wise
  // reads below free of bank conflicts.
  __shared__ float part_w[kGroups][kColumns + 1];
  __shared__ float part_b[kGroups][kColumns + 1];
  int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  int column = lane % kColumns, group = warp * Strip<T>::kRowsPerWarp + lane / kColumns;
  int strip = blockIdx.x * kColumns;

  int c = strip + column;
  float w = 0.f, b = 0.f;
  if (c < C) {
#pragma unroll 4
    for (int64_t n = group; n < N; n += kGroups) {
      float dy = to_float(dout[n * C + c]);
      float xhat = (to_float(inp[n * C + c]) - mean[n]) * rstd[n];
      w += dy * xhat;
      b += dy;
    }
  }
  part_w[group][column] = w;
  part_b[group][column] = b;
  __syncthreads();

  // Warp k < kColumns sums column strip + k: lane l adds row groups l,
  // l + 32, ... in that order, then a warp_sum; all in a fixed order, so
  // bitwise repeatable. The branch is uniform per warp.
  if (warp < kColumns) {
    w = 0.f;
    b = 0.f;
    for (int g = lane; g < kGroups; g += kWarp) {
      w += part_w[g][warp];
      b += part_b[g][warp];
    }
    w = warp_sum(w);
    b = warp_sum(b);
    int col = strip + warp;
    if (lane == 0 && col < C) {
      dweight[col] = from_float<T>(to_float(dweight[col]) + w);
      dbias[col] = from_float<T>(to_float(dbias[col]) + b);
    }
  }
}

void check_sizes(int64_t N, int64_t C) {
  TANDEM_CHECK(C >= 1 && C <= INT_MAX, "layernorm: C must be in [1, INT_MAX], got " + std::to_string(C));
  TANDEM_CHECK(N >= 0, "layernorm: negative N");
  TANDEM_CHECK((N + kRowsPerBlock - 1) / kRowsPerBlock <= INT_MAX, "layernorm: too many rows");
}

}  // namespace

void layernorm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                       int64_t N, int64_t C, float eps, DType dtype, cudaStream_t stream) {
  check_sizes(N, C);
  if (N == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T,
                        forward_kernel<T><<<ceil_div(N, kRowsPerBlock), kRowBlock, 0, stream>>>(
                            static_cast<T*>(out), mean, rstd, static_cast<const T*>(inp),
                            static_cast<const T*>(weight), static_cast<const T*>(bias), N,
                            static_cast<int>(C), eps));
  CUDA_CHECK_LAUNCH();
}

void residual_layernorm_forward(void* residual, void* out, float* mean, float* rstd, const void* a, const void* b,
                                const void* weight, const void* bias, int64_t N, int64_t C, float eps, DType dtype,
                                cudaStream_t stream) {
  check_sizes(N, C);
  if (N == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T,
                        residual_forward_kernel<T><<<ceil_div(N, kRowsPerBlock), kRowBlock, 0, stream>>>(
                            static_cast<T*>(residual), static_cast<T*>(out), mean, rstd,
                            static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(weight),
                            static_cast<const T*>(bias), N, static_cast<int>(C), eps));
  CUDA_CHECK_LAUNCH();
}

void layernorm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                        const void* weight, const float* mean, const float* rstd, int64_t N, int64_t C,
                        DType dtype, cudaStream_t stream) {
  check_sizes(N, C);
  if (N == 0) return;
  int c32 = static_cast<int>(C);
  // The column kernel goes first: it reads dout, which the dinp kernel may
  // overwrite when dinp aliases dout. Both run on `stream`, in this order.
  TANDEM_DISPATCH_FLOAT(dtype, T,
                        backward_params_kernel<T><<<ceil_div(C, Strip<T>::kColumns), kColBlock, 0, stream>>>(
                            static_cast<T*>(dweight), static_cast<T*>(dbias), static_cast<const T*>(dout),
                            static_cast<const T*>(inp), mean, rstd, N, c32));
  CUDA_CHECK_LAUNCH();
  TANDEM_DISPATCH_FLOAT(dtype, T,
                        backward_dinp_kernel<T><<<ceil_div(N, kRowsPerBlock), kRowBlock, 0, stream>>>(
                            static_cast<T*>(dinp), static_cast<const T*>(dout), static_cast<const T*>(inp),
                            static_cast<const T*>(weight), mean, rstd, N, c32));
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
