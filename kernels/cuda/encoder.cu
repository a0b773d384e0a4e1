// CUDA token + position encoder, f32 and bf16 storage, fp32 math.
//
// Forward: one block per (b, t) row (grid-stride over rows), threads over C;
// each element is one fp32 addition, rounded once when stored.
//
// Backward (Note [Deterministic encoder backward] in kernels/encoder.h):
//   - dwte is cuda::embedding_backward over the B * T rows, the same kernel
//     and so the same summation order as the embedding (no second copy of
//     that scan to keep in step);
//   - dwpe: one thread per (t, c), a grid-stride loop over the T * C
//     elements. The thread loads dwpe[t][c], adds dout[b][t][c] for b = 0,
//     1, ... in that order in fp32, and stores once. Consecutive threads take
//     consecutive c, so every load is coalesced; no thread shares an element,
//     so there are no atomics and the result is bitwise repeatable.
// The two gradients are disjoint tensors, so the two launches need no order
// between them beyond the stream's.
#include <climits>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/encoder.h"

namespace tandem::kernels::cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kForwardMaxThreads = 256;
constexpr int64_t kForwardMaxBlocks = 65535;
constexpr int kPositionUnroll = 8;  // dout loads of one dwpe chain in flight together

template <typename T>
__global__ void forward_kernel(T* __restrict__ out, const int32_t* __restrict__ tokens, const T* __restrict__ wte,
                               const T* __restrict__ wpe, int64_t N, int64_t Tlen, int V, int64_t C) {
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    int v = tokens[n];
    const T* pos = wpe + (n % Tlen) * C;
    T* y = out + n * C;
    if (v >= 0 && v < V) {
      const T* tok = wte + static_cast<int64_t>(v) * C;
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) y[c] = from_float<T>(to_float(tok[c]) + to_float(pos[c]));
    } else {  // broken precondition: a visible NaN row, no out-of-bounds read
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) y[c] = from_float<T>(NAN);
    }
  }
}

// dwpe[t][c] += dout[0][t][c] + dout[1][t][c] + ..., left to right, for the
// T * C elements of dwpe's first T rows.
template <typename T>
__global__ void position_backward_kernel(T* __restrict__ dwpe, const T* __restrict__ dout, int64_t B,
                                         int64_t TC) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < TC;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float acc = to_float(dwpe[i]);
    // The unroll lets the loads run ahead; the additions stay in b order.
#pragma unroll kPositionUnroll
    for (int64_t b = 0; b < B; b++) acc += to_float(dout[b * TC + i]);
    dwpe[i] = from_float<T>(acc);
  }
}

void check_sizes(int64_t B, int64_t T, int64_t V, int64_t C) {
  TANDEM_CHECK(B >= 0 && T >= 0 && V >= 0 && C >= 0, "encoder: negative size");
  TANDEM_CHECK(V <= INT_MAX, "encoder: V above INT_MAX cannot be indexed by i32");
  TANDEM_CHECK(C <= INT_MAX, "encoder: C above INT_MAX");
}

}  // namespace

void encoder_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe, int64_t B, int64_t T,
                     int64_t V, int64_t C, DType dtype, cudaStream_t stream) {
  check_sizes(B, T, V, C);
  int64_t N = B * T;
  if (N == 0 || C == 0) return;
  int64_t threads = (C + kWarp - 1) / kWarp * kWarp;
  if (threads > kForwardMaxThreads) threads = kForwardMaxThreads;
  unsigned int blocks = static_cast<unsigned int>(N < kForwardMaxBlocks ? N : kForwardMaxBlocks);
  TANDEM_DISPATCH_FLOAT(dtype, Elem,
                        forward_kernel<Elem><<<blocks, static_cast<unsigned int>(threads), 0, stream>>>(
                            static_cast<Elem*>(out), tokens, static_cast<const Elem*>(wte),
                            static_cast<const Elem*>(wpe), N, T, static_cast<int>(V), C));
  CUDA_CHECK_LAUNCH();
}

void encoder_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, int64_t B, int64_t T,
                      int64_t V, int64_t C, DType dtype, cudaStream_t stream) {
  check_sizes(B, T, V, C);
  if (B == 0 || T == 0 || C == 0) return;  // nothing to add to either gradient
  embedding_backward(dwte, dout, tokens, B * T, V, C, dtype, stream);
  int64_t TC = T * C;
  TANDEM_DISPATCH_FLOAT(dtype, Elem,
                        position_backward_kernel<Elem><<<grid_for(TC), kBlock, 0, stream>>>(
                            static_cast<Elem*>(dwpe), static_cast<const Elem*>(dout), B, TC));
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
