// CUDA bias forward and backward, f32 and bf16 storage, fp32 math.
//
// bias_backward is deterministic and allocates nothing: each block owns a
// strip of columns and sums all N rows of it itself, so no partial sums
// leave the block (no atomics, no scratch buffer). Inside the block, thread
// (x, y) sums rows y, y + kRows, y + 2*kRows, ... of column x in order, then
// the kRows partial sums are folded by a fixed tree in shared memory. The
// order of every addition depends only on (N, C), never on scheduling.
//
// The strip is 32 bytes wide (8 f32 or 16 bf16 columns): one DRAM sector per
// row, so narrow strips cost no extra memory traffic and a (N, 768) matrix
// already spreads over 48 to 96 blocks. Few columns and many rows leave SMs
// idle; splitting rows across blocks would need a scratch buffer.
#include "kernels/bias.h"
#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {

namespace {

constexpr int kStripBytes = 32;
constexpr int kBackwardThreads = 1024;
template <typename T> constexpr int kStripCols = kStripBytes / static_cast<int>(sizeof(T));
template <typename T> constexpr int kStripRows = kBackwardThreads / kStripCols<T>;

template <typename T>
__global__ void bias_add_kernel(T* out, const T* bias, int64_t n, int64_t C) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = from_float<T>(to_float(out[i]) + to_float(bias[i % C]));
}

// Block (kStripCols, kStripRows); grid ceil(C / kStripCols).
template <typename T>
__global__ void __launch_bounds__(kBackwardThreads)
    bias_backward_kernel(T* dbias /* (C) */, const T* dout /* (N, C) */, int64_t N, int64_t C) {
  constexpr int kCols = kStripCols<T>, kRows = kStripRows<T>;
  static_assert((kRows & (kRows - 1)) == 0, "the tree fold needs a power-of-two row count");
  __shared__ float partial[kRows][kCols];
  int x = threadIdx.x, y = threadIdx.y;
  int64_t col = blockIdx.x * (int64_t)kCols + x;

  float sum = 0.f;
  if (col < C) {
#pragma unroll 4
    for (int64_t row = y; row < N; row += kRows) sum += to_float(dout[row * C + col]);
  }
  partial[y][x] = sum;
  __syncthreads();
  for (int stride = kRows / 2; stride > 0; stride /= 2) {
    if (y < stride) partial[y][x] += partial[y + stride][x];
    __syncthreads();
  }
  if (y == 0 && col < C) dbias[col] = from_float<T>(to_float(dbias[col]) + partial[0][x]);
}

}  // namespace

void bias_add(void* out, const void* bias, int64_t N, int64_t C, DType dtype, cudaStream_t stream) {
  int64_t n = N * C;
  if (n == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T, bias_add_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(
                                      static_cast<T*>(out), static_cast<const T*>(bias), n, C));
  CUDA_CHECK_LAUNCH();
}

void bias_backward(void* dbias, const void* dout, int64_t N, int64_t C, DType dtype, cudaStream_t stream) {
  // N == 0 adds nothing; C == 0 has nothing to add to.
  if (N == 0 || C == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T, {
    dim3 block(kStripCols<T>, kStripRows<T>);
    bias_backward_kernel<T><<<ceil_div(C, kStripCols<T>), block, 0, stream>>>(
        static_cast<T*>(dbias), static_cast<const T*>(dout), N, C);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
