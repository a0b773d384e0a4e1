// CUDA embedding lookup, f32 and bf16 storage, fp32 accumulation.
//
// Forward: one block per output row (grid-stride over rows), threads over C.
//
// Backward (Note [Deterministic embedding backward] in kernels/embedding.h):
// the sum for one (v, c) is a fixed chain of fp32 additions in increasing n,
// so it has to run in one thread; the parallelism is across (v, c). Each
// warp owns a set of table rows (a "class": the v with v % classes == cls)
// and a strip of kStripWidth channels (kLaneChannels per lane, 32 apart so
// every access is coalesced). The warp scans all N indices, 32 per ballot,
// picks the rows of its class and adds them, in increasing n, into a running
// fp32 sum held in registers for the table row it is on. When the next row
// of its class names another table row it stores the running sum and loads
// the new row. No two warps ever touch the same (v, c), so there are no
// atomics and no races, and nothing is allocated.
//
// The running sum starts from dtable's value and is stored back as it is, so
// in f32 the chain is exactly the CPU twin's, even when a table row is
// stored and reloaded. In bf16 each store rounds: once per (v, c) when the
// class holds one table row of this batch (always when V <= classes), else
// once per run of rows of v within its class.
//
// Cost: every warp reads all N indices (from L1/L2), so classes are chosen
// to give about kTargetWarps warps: enough to hide memory latency, few
// enough that the index scan stays small against the dout reads. The price
// of the fixed order is a hot index: its chain runs in the kStripWidth-wide
// warps of one class, kBatch rows per memory round trip. Seen on an H200,
// N = 8192, C = 768: ~85 us with uniform indices (V = 50257), ~0.7 ms when
// half of the indices are one token.
#include <climits>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/embedding.h"

namespace tandem::kernels::cuda {

namespace {

constexpr int kWarp = 32;
constexpr unsigned int kFullMask = 0xffffffffu;

// Forward.
constexpr int kForwardMaxThreads = 256;
constexpr int64_t kForwardMaxBlocks = 65535;

// Backward.
constexpr int kLaneChannels = 4;                       // channels per lane, kWarp apart
constexpr int kStripWidth = kWarp * kLaneChannels;     // channels per warp
constexpr int kWarpsPerBlock = 8;
constexpr int kBackwardBlock = kWarpsPerBlock * kWarp;
constexpr int kTargetWarps = 2048;                     // ~16 per SM on an H100
constexpr int kBatch = 8;        // rows of a class whose dout loads are in flight together
constexpr int kScanChunks = 4;   // chunks of 32 indices loaded together

template <typename T>
__global__ void forward_kernel(T* __restrict__ out, const T* __restrict__ table, const int32_t* __restrict__ indices,
                               int64_t N, int V, int64_t C) {
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    int v = indices[n];
    T* y = out + n * C;
    if (v >= 0 && v < V) {
      const T* row = table + static_cast<int64_t>(v) * C;
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) y[c] = row[c];
    } else {  // broken precondition: a visible NaN row, no out-of-bounds read
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) y[c] = from_float<T>(NAN);
    }
  }
}

// The lane's channels of table row v: c0, c0 + 32, ... (those below C).
template <typename T>
__device__ __forceinline__ void load_row(float (&acc)[kLaneChannels], const T* dtable, int v, int64_t c0,
                                         int64_t C) {
  const T* row = dtable + static_cast<int64_t>(v) * C;
#pragma unroll
  for (int j = 0; j < kLaneChannels; j++) {
    int64_t c = c0 + j * kWarp;
    acc[j] = c < C ? to_float(row[c]) : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ void store_row(T* dtable, int v, const float (&acc)[kLaneChannels], int64_t c0,
                                          int64_t C) {
  T* row = dtable + static_cast<int64_t>(v) * C;
#pragma unroll
  for (int j = 0; j < kLaneChannels; j++) {
    int64_t c = c0 + j * kWarp;
    if (c < C) row[c] = from_float<T>(acc[j]);
  }
}

// Grid: ceil(strips * classes / kWarpsPerBlock) blocks; warp w owns strip
// w % strips and class w / strips. Warp-uniform control flow throughout:
// `pending` and `src` come from a ballot, so every lane takes every branch
// together and the shuffles see the full warp.
template <typename T>
__global__ void __launch_bounds__(kBackwardBlock)
    backward_kernel(T* __restrict__ dtable, const T* __restrict__ dout, const int32_t* __restrict__ indices,
                    int64_t N, int V, int64_t C, int strips, int classes) {
  int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  int lane = threadIdx.x % kWarp;
  if (warp >= static_cast<int64_t>(strips) * classes) return;  // the whole warp
  int cls = static_cast<int>(warp / strips);
  int64_t c0 = (warp % strips) * kStripWidth + lane;

  float acc[kLaneChannels] = {};
  int cur = -1;  // the table row `acc` holds; -1 before the first
  for (int64_t base = 0; base < N; base += kScanChunks * kWarp) {
    // kScanChunks chunks of 32 indices, their loads in flight together.
    int v[kScanChunks];
#pragma unroll
    for (int k = 0; k < kScanChunks; k++) {
      int64_t n = base + k * kWarp + lane;
      v[k] = n < N ? indices[n] : -1;
    }
#pragma unroll
    for (int k = 0; k < kScanChunks; k++) {
      int64_t chunk = base + k * kWarp;
      // Out-of-range indices belong to no class: skipped, never dereferenced.
      bool mine = v[k] >= 0 && v[k] < V && v[k] % classes == cls;
      unsigned int pending = __ballot_sync(kFullMask, mine);
      while (pending) {  // so chunk < N: the chunk holds a row of ours
        // Take up to kBatch of the class's rows in increasing n and load
        // their dout values, all loads in flight together; then add them one
        // after another, in order. The loads are unconditional (row `chunk`
        // stands in for an empty slot, channel C - 1 for a lane past C; their
        // values are never stored), so that none waits for another.
        int src[kBatch];
        T raw[kBatch][kLaneChannels];
#pragma unroll
        for (int b = 0; b < kBatch; b++) {
          src[b] = pending ? __ffs(pending) - 1 : -1;
          pending &= pending - 1;  // clears the lowest bit; 0 stays 0
          const T* dy = dout + (chunk + (src[b] < 0 ? 0 : src[b])) * C;
#pragma unroll
          for (int j = 0; j < kLaneChannels; j++) {
            int64_t c = c0 + j * kWarp;
            raw[b][j] = dy[c < C ? c : C - 1];
          }
        }
#pragma unroll
        for (int b = 0; b < kBatch; b++) {
          if (src[b] < 0) break;
          int row = __shfl_sync(kFullMask, v[k], src[b]);
          if (row != cur) {
            if (cur >= 0) store_row(dtable, cur, acc, c0, C);
            load_row(acc, dtable, row, c0, C);  // sees the store above when row was stored before
            cur = row;
          }
#pragma unroll
          for (int j = 0; j < kLaneChannels; j++) acc[j] += to_float(raw[b][j]);
        }
      }
    }
  }
  if (cur >= 0) store_row(dtable, cur, acc, c0, C);
}

void check_sizes(int64_t N, int64_t V, int64_t C) {
  TANDEM_CHECK(N >= 0 && V >= 0 && C >= 0, "embedding: negative size");
  TANDEM_CHECK(V <= INT_MAX, "embedding: V above INT_MAX cannot be indexed by i32");
  TANDEM_CHECK(C <= INT_MAX, "embedding: C above INT_MAX");
}

}  // namespace

void embedding_forward(void* out, const void* table, const int32_t* indices, int64_t N, int64_t V, int64_t C,
                       DType dtype, cudaStream_t stream) {
  check_sizes(N, V, C);
  if (N == 0 || C == 0) return;
  int64_t threads = (C + kWarp - 1) / kWarp * kWarp;
  if (threads > kForwardMaxThreads) threads = kForwardMaxThreads;
  unsigned int blocks = static_cast<unsigned int>(N < kForwardMaxBlocks ? N : kForwardMaxBlocks);
  TANDEM_DISPATCH_FLOAT(dtype, T,
                        forward_kernel<T><<<blocks, static_cast<unsigned int>(threads), 0, stream>>>(
                            static_cast<T*>(out), static_cast<const T*>(table), indices, N,
                            static_cast<int>(V), C));
  CUDA_CHECK_LAUNCH();
}

void embedding_backward(void* dtable, const void* dout, const int32_t* indices, int64_t N, int64_t V, int64_t C,
                        DType dtype, cudaStream_t stream) {
  check_sizes(N, V, C);
  if (N == 0 || V == 0 || C == 0) return;  // V == 0: every index is out of range, nothing to add
  int64_t strips = (C + kStripWidth - 1) / kStripWidth;
  // About kTargetWarps warps; more classes than table rows or than indices
  // would only add warps with nothing to do.
  int64_t classes = (kTargetWarps + strips - 1) / strips;
  if (classes > V) classes = V;
  if (classes > N) classes = N;
  int64_t warps = strips * classes;
  TANDEM_DISPATCH_FLOAT(dtype, T,
                        backward_kernel<T><<<ceil_div(warps, kWarpsPerBlock), kBackwardBlock, 0, stream>>>(
                            static_cast<T*>(dtable), static_cast<const T*>(dout), indices, N,
                            static_cast<int>(V), C, static_cast<int>(strips), static_cast<int>(classes)));
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
