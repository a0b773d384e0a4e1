// CUDA deterministic reductions: two passes over a fixed grid. See Note
// [Deterministic reduction] in kernels/reduce.h.
#include "kernels/cuda/common.cuh"
#include "kernels/reduce.h"

namespace tandem::kernels::cuda {

namespace {

// Pass 1: one partial per block, so the grid is the scratch size. Pass 2
// sums them with one thread per partial, which block_sum allows up to 1024.
constexpr int kPartials = static_cast<int>(kReduceScratchElems);
static_assert(kPartials % 32 == 0 && kPartials <= 1024, "pass 2 is one block, one thread per partial");
// 1024 blocks of 256 threads are about 2 waves on an H100 (132 SMs x 2048
// threads): enough loads in flight to run at memory bandwidth.
constexpr int kPass1Threads = 256;

struct Identity {
  __device__ static double f(double x) { return x; }
};
struct Square {
  __device__ static double f(double x) { return x * x; }
};

template <typename Op, typename T>
__global__ void partial_kernel(float* partials, const T* x, int64_t n) {
  // A thread adds n / 2^18 terms (thousands for a 1B-element gradient), so
  // its running sum is double; the few tree levels after it are fp32.
  double acc = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    acc += Op::f(to_float(x[i]));
  float total = block_sum(static_cast<float>(acc));
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void final_kernel(float* out, const float* partials) {
  float total = block_sum(partials[threadIdx.x]);
  if (threadIdx.x == 0) out[0] = total;
}

// n = 0 needs no special case: every partial is 0.
template <typename Op>
void reduce(float* out, const void* x, int64_t n, DType dtype, float* scratch, cudaStream_t stream) {
  TANDEM_DISPATCH_FLOAT(dtype, T, partial_kernel<Op, T><<<kPartials, kPass1Threads, 0, stream>>>(
                                      scratch, static_cast<const T*>(x), n));
  CUDA_CHECK_LAUNCH();
  final_kernel<<<1, kPartials, 0, stream>>>(out, scratch);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void sum(float* out, const void* x, int64_t n, DType dtype, float* scratch, cudaStream_t stream) {
  reduce<Identity>(out, x, n, dtype, scratch, stream);
}

void norm_squared(float* out, const void* x, int64_t n, DType dtype, float* scratch, cudaStream_t stream) {
  reduce<Square>(out, x, n, dtype, scratch, stream);
}

}  // namespace tandem::kernels::cuda
