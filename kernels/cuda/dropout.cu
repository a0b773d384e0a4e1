// CUDA dropout, f32 and bf16 storage, fp32 math.
//
// One thread per Philox block rather than per element: philox_uniform(seed,
// c) is word c % 4 of block c / 4, so a thread evaluates block k once and
// uses its four words for counters 4k .. 4k+3, skipping the counters outside
// [offset, offset + n) at the two ends (offset need not be a multiple of 4).
// The words and the keep test are exactly those of the CPU twin, so the
// masks are identical.
#include "kernels/cuda/common.cuh"
#include "kernels/dropout.h"
#include "runtime/core/philox.h"

namespace tandem::kernels::cuda {

namespace {

constexpr int kWordsPerBlock = 4;  // Philox4x32: four 32-bit words per evaluation

// out may alias inp: each element is read, then written, by one thread.
template <typename T>
__global__ void dropout_kernel(T* out, const T* inp, int64_t n, float p, float scale, uint64_t seed,
                               uint64_t offset, uint64_t first_block, uint64_t num_blocks) {
  for (uint64_t k = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; k < num_blocks;
       k += (uint64_t)gridDim.x * blockDim.x) {
    uint64_t block = first_block + k;
    Philox4 words = philox4x32(block, seed);
#pragma unroll
    for (int j = 0; j < kWordsPerBlock; j++) {
      uint64_t counter = block * kWordsPerBlock + j;
      if (counter < offset || counter - offset >= (uint64_t)n) continue;
      int64_t i = (int64_t)(counter - offset);
      bool keep = philox_bits_to_uniform(words.v[j]) >= p;
      out[i] = keep ? from_float<T>(to_float(inp[i]) * scale) : from_float<T>(0.f);
    }
  }
}

void launch(void* out, const void* inp, int64_t n, DType dtype, const DropoutOptions& opts,
            cudaStream_t stream) {
  if (n == 0) return;
  uint64_t first_block = opts.offset / kWordsPerBlock;
  uint64_t last_block = (opts.offset + static_cast<uint64_t>(n) - 1) / kWordsPerBlock;
  uint64_t num_blocks = last_block - first_block + 1;
  float scale = dropout_scale(opts);
  TANDEM_DISPATCH_FLOAT(dtype, T, dropout_kernel<T><<<grid_for(static_cast<int64_t>(num_blocks)), kBlock, 0, stream>>>(
                                      static_cast<T*>(out), static_cast<const T*>(inp), n, opts.p, scale,
                                      opts.seed, opts.offset, first_block, num_blocks));
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void dropout_forward(void* out, const void* inp, int64_t n, DType dtype, const DropoutOptions& opts,
                     cudaStream_t stream) {
  launch(out, inp, n, dtype, opts, stream);
}

// The gradient of a masked scale is the same masked scale.
void dropout_backward(void* dinp, const void* dout, int64_t n, DType dtype, const DropoutOptions& opts,
                      cudaStream_t stream) {
  launch(dinp, dout, n, dtype, opts, stream);
}

}  // namespace tandem::kernels::cuda
