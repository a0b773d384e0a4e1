// CUDA causal multi-head attention, f32 and bf16 storage, fp32 math; lse is
// f32. Flash-style: the (T, T) score matrix never exists, not even per head.
//
// Design (the first version: correct and deterministic, then fast):
// - Every kernel has blocks of kWarps warps; each warp owns one row (a query
//   row in the forward and in the dq kernel, a key row in the dk/dv kernel)
//   and keeps that row's result, HS <= 128 values, in registers: lane l owns
//   dims l, l + 32, l + 64, l + 96.
// - The other side is streamed through shared memory in tiles of kTile = 32
//   rows (K and V in the forward and the dq kernel; Q, dout, lse and D in
//   the dk/dv kernel), converted to fp32 on load and shared by the block's
//   kWarps rows. Within a tile, lane l owns row l of it: it computes that
//   row's score (a dot product over HS read from shared memory, with an odd
//   row stride so the 32 lanes hit 32 different banks), and the warp then
//   broadcasts each lane's weight with a shuffle while every lane adds
//   weight * tile row over its own dims.
// - Forward: online softmax over the key tiles (running max m and sum l,
//   the accumulator rescaled by exp(m_old - m_new)); writes out = acc / l and
//   lse = m + log(l).
// - Backward: two kernels, no atomics, so the result is bitwise the same run
//   to run. dq: per query row i, D_i = dout_i . out_i, then over key tiles
//   j <= i, p = exp(s - lse_i), ds = p (dout_i . v_j - D_i), dq_i += ds k_j.
//   dk/dv: per key row j, over query tiles i >= j, with D recomputed per
//   tile by the same warp reduction as the dq kernel (so the same bits; no
//   workspace needed), dv_j += p dout_i and dk_j += ds q_i. The two kernels
//   write disjoint columns of dqkv (q versus k and v).
// - Causality: a block's tiles stop at its last row (forward, dq) or start at
//   its first (dk/dv); blocks are numbered so that the longest rows start
//   first, which keeps the tail of the grid short.
//
// Expected limits (for the tuning round): all math is fp32 on CUDA cores, no
// tensor cores, and the score loop reads two shared-memory values per FMA,
// so it is bound by shared-memory bandwidth at a fraction of fp32 peak. A
// K/V (or Q/dout) tile is reused by only kWarps = 8 rows, so L2 traffic is
// about T^2 * HS / 8 elements per head and kernel. Shared memory is sized for
// HS = 128 (about 41 KB a block) whatever HS is; HS = 64 wastes half. For
// GPT-2 124M (T = 1024, HS = 64) expect several times the time of a tensor
// core FlashAttention; the next steps are several rows per warp (register
// reuse of each tile value), templating on HS, and mma instructions.
#include <climits>

#include "kernels/attention.h"
#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 8;                  // rows (warps) per block
constexpr int kThreads = kWarps * kWarp;   // threads per block
constexpr int kTile = kWarp;               // rows per shared-memory tile: one per lane
constexpr int kMaxHS = static_cast<int>(kAttentionMaxHeadSize);
constexpr int kDimsPerLane = kMaxHS / kWarp;  // a row's dims held by one lane
constexpr int kMaxStride = kMaxHS + 1;     // odd row stride of a tile (see tile_stride)
constexpr unsigned kFullMask = 0xffffffffu;

// Row stride of a tile in shared memory: HS rounded up to an odd number. Lane
// l reads row l at l * stride + d; with an odd stride the 32 lanes hit 32
// different banks.
__device__ __forceinline__ int tile_stride(int HS) { return HS | 1; }

// Loads rows row0 .. row0 + kTile - 1 of a (rows, pitch) matrix, HS columns
// each, into `tile` as fp32; rows at or past rows_end become zeros, so that
// the lanes that own them compute with finite values (times a zero weight).
template <typename T>
__device__ __forceinline__ void load_tile(float* tile, const T* __restrict__ base, int64_t pitch, int64_t row0,
                                          int64_t rows_end, int HS) {
  int stride = tile_stride(HS);
  for (int e = threadIdx.x; e < kTile * HS; e += kThreads) {
    int r = e / HS, d = e % HS;
    int64_t row = row0 + r;
    tile[r * stride + d] = row < rows_end ? to_float(base[row * pitch + d]) : 0.f;
  }
}

// One row of HS values, from global memory into a warp's shared row.
template <typename T>
__device__ __forceinline__ void load_row(float* dst, const T* __restrict__ src, int HS, int lane) {
  for (int d = lane; d < HS; d += kWarp) dst[d] = to_float(src[d]);
}

// a . b over HS values, both in shared memory; every lane its own pair.
__device__ __forceinline__ float dot(const float* a, const float* b, int HS) {
  float s = 0.f;
#pragma unroll 8
  for (int d = 0; d < HS; d++) s += a[d] * b[d];
  return s;
}

// a . b over HS values in global memory, summed across the warp (lane-strided,
// then warp_sum): every lane gets the same bits, and so does every kernel
// that calls this on the same rows.
template <typename T>
__device__ __forceinline__ float warp_dot(const T* __restrict__ a, const T* __restrict__ b, int HS, int lane) {
  float s = 0.f;
  for (int d = lane; d < HS; d += kWarp) s += to_float(a[d]) * to_float(b[d]);
  return warp_sum(s);
}

// Sizes shared by the three kernels. Positions are (b, t); heads h.
struct Dims {
  int seq_len;      // T
  int NH, HS;
  int row_blocks;   // ceil(T / kWarps): blocks per (b, h)
  float scale;      // 1 / sqrt(HS)
  __device__ int64_t C() const { return static_cast<int64_t>(NH) * HS; }
};

// Which (b, h) and which block of kWarps rows this block owns. Block x takes
// row block x / BH of head pair x % BH, so consecutive blocks share a row
// block across heads; `longest_first` flips the row blocks so that the ones
// with the most work (the last query rows) are scheduled first.
struct BlockRows {
  int64_t b, h;
  int row0;  // first row of the block
};
__device__ __forceinline__ BlockRows block_rows(const Dims& s, bool longest_first) {
  int bh_count = static_cast<int>(gridDim.x / s.row_blocks);
  int bh = static_cast<int>(blockIdx.x % bh_count);
  int rb = static_cast<int>(blockIdx.x / bh_count);
  if (longest_first) rb = s.row_blocks - 1 - rb;
  return {bh / s.NH, bh % s.NH, rb * kWarps};
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ qkv, Dims s) {
  __shared__ float k_tile[kTile * kMaxStride];
  __shared__ float v_tile[kTile * kMaxStride];
  __shared__ float q_rows[kWarps][kMaxHS];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int HS = s.HS, stride = tile_stride(HS);
  const int64_t C = s.C(), pitch = 3 * C;
  BlockRows br = block_rows(s, /*longest_first=*/true);
  const int i = br.row0 + warp;  // this warp's query row
  const bool active = i < s.seq_len;
  const T* head = qkv + br.b * s.seq_len * pitch + br.h * HS;  // q of (b, t = 0, h)

  if (active) load_row(q_rows[warp], head + i * pitch, HS, lane);
  __syncwarp();

  float acc[kDimsPerLane];
#pragma unroll
  for (int r = 0; r < kDimsPerLane; r++) acc[r] = 0.f;
  float m = -INFINITY, l = 0.f;  // running max and sum of exp(score - m)

  const int last = min(br.row0 + kWarps, s.seq_len) - 1;  // the block's last query = its last key
  for (int j0 = 0; j0 <= last; j0 += kTile) {
    __syncthreads();  // every warp is done with the previous tile
    load_tile(k_tile, head + C, pitch, j0, last + 1, HS);
    load_tile(v_tile, head + 2 * C, pitch, j0, last + 1, HS);
    __syncthreads();
    if (!active || j0 > i) continue;  // uniform per warp

    const int j = j0 + lane;
    float score = j <= i ? s.scale * dot(q_rows[warp], k_tile + lane * stride, HS) : -INFINITY;
    // Key j0 <= i is in this tile, so m_new is finite: no exp(-inf - -inf).
    float m_new = fmaxf(m, warp_max(score));
    float p = expf(score - m_new);   // 0 for masked keys
    float correction = expf(m - m_new);  // 0 on the first tile (m = -inf)
    l = l * correction + warp_sum(p);
    m = m_new;
#pragma unroll
    for (int r = 0; r < kDimsPerLane; r++) acc[r] *= correction;
    const int keys = min(kTile, i - j0 + 1);
    for (int jj = 0; jj < keys; jj++) {
      float pj = __shfl_sync(kFullMask, p, jj);
      const float* v = v_tile + jj * stride;
#pragma unroll
      for (int r = 0; r < kDimsPerLane; r++) {
        int d = lane + r * kWarp;
        if (d < HS) acc[r] += pj * v[d];
      }
    }
  }
  if (!active) return;

  T* o = out + (br.b * s.seq_len + i) * C + br.h * HS;
  float inv_l = 1.f / l;
#pragma unroll
  for (int r = 0; r < kDimsPerLane; r++) {
    int d = lane + r * kWarp;
    if (d < HS) o[d] = from_float<T>(acc[r] * inv_l);
  }
  if (lane == 0) lse[(br.b * s.NH + br.h) * s.seq_len + i] = m + logf(l);
}

// dq_i = scale * sum_{j <= i} p_ij (dout_i . v_j - D_i) k_j, one query row
// per warp; writes the q columns of dqkv.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_dq_kernel(T* __restrict__ dqkv, const T* __restrict__ dout, const T* __restrict__ qkv,
                       const T* __restrict__ out, const float* __restrict__ lse, Dims s) {
  __shared__ float k_tile[kTile * kMaxStride];
  __shared__ float v_tile[kTile * kMaxStride];
  __shared__ float q_rows[kWarps][kMaxHS];
  __shared__ float dout_rows[kWarps][kMaxHS];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int HS = s.HS, stride = tile_stride(HS);
  const int64_t C = s.C(), pitch = 3 * C;
  BlockRows br = block_rows(s, /*longest_first=*/true);
  const int i = br.row0 + warp;
  const bool active = i < s.seq_len;
  const T* head = qkv + br.b * s.seq_len * pitch + br.h * HS;
  const int64_t o_row = (br.b * s.seq_len + i) * C + br.h * HS;  // (b, i, h) in out and dout

  float D = 0.f, row_lse = 0.f;
  if (active) {
    load_row(q_rows[warp], head + i * pitch, HS, lane);
    load_row(dout_rows[warp], dout + o_row, HS, lane);
    D = warp_dot(dout + o_row, out + o_row, HS, lane);
    row_lse = lse[(br.b * s.NH + br.h) * s.seq_len + i];
  }
  __syncwarp();

  float dq[kDimsPerLane];
#pragma unroll
  for (int r = 0; r < kDimsPerLane; r++) dq[r] = 0.f;

  const int last = min(br.row0 + kWarps, s.seq_len) - 1;
  for (int j0 = 0; j0 <= last; j0 += kTile) {
    __syncthreads();
    load_tile(k_tile, head + C, pitch, j0, last + 1, HS);
    load_tile(v_tile, head + 2 * C, pitch, j0, last + 1, HS);
    __syncthreads();
    if (!active || j0 > i) continue;

    const int j = j0 + lane;
    float ds = 0.f;
    if (j <= i) {
      float p = expf(s.scale * dot(q_rows[warp], k_tile + lane * stride, HS) - row_lse);
      ds = p * (dot(dout_rows[warp], v_tile + lane * stride, HS) - D);
    }
    const int keys = min(kTile, i - j0 + 1);
    for (int jj = 0; jj < keys; jj++) {
      float dsj = __shfl_sync(kFullMask, ds, jj);
      const float* k = k_tile + jj * stride;
#pragma unroll
      for (int r = 0; r < kDimsPerLane; r++) {
        int d = lane + r * kWarp;
        if (d < HS) dq[r] += dsj * k[d];
      }
    }
  }
  if (!active) return;

  T* dq_row = dqkv + (br.b * s.seq_len + i) * pitch + br.h * HS;
#pragma unroll
  for (int r = 0; r < kDimsPerLane; r++) {
    int d = lane + r * kWarp;
    if (d < HS) dq_row[d] = from_float<T>(s.scale * dq[r]);
  }
}

// dk_j = scale * sum_{i >= j} ds_ij q_i and dv_j = sum_{i >= j} p_ij dout_i,
// one key row per warp; writes the k and v columns of dqkv.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_dkdv_kernel(T* __restrict__ dqkv, const T* __restrict__ dout, const T* __restrict__ qkv,
                         const T* __restrict__ out, const float* __restrict__ lse, Dims s) {
  __shared__ float q_tile[kTile * kMaxStride];
  __shared__ float dout_tile[kTile * kMaxStride];
  __shared__ float lse_tile[kTile];
  __shared__ float d_tile[kTile];  // D_i of the tile's query rows
  __shared__ float k_rows[kWarps][kMaxHS];
  __shared__ float v_rows[kWarps][kMaxHS];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int HS = s.HS, stride = tile_stride(HS);
  const int64_t C = s.C(), pitch = 3 * C;
  // The first key rows see the most queries, and come first in block order.
  BlockRows br = block_rows(s, /*longest_first=*/false);
  const int j = br.row0 + warp;  // this warp's key row
  const bool active = j < s.seq_len;
  const T* head = qkv + br.b * s.seq_len * pitch + br.h * HS;
  const T* dout_head = dout + br.b * s.seq_len * C + br.h * HS;
  const T* out_head = out + br.b * s.seq_len * C + br.h * HS;
  const float* lse_head = lse + (br.b * s.NH + br.h) * s.seq_len;

  if (active) {
    load_row(k_rows[warp], head + j * pitch + C, HS, lane);
    load_row(v_rows[warp], head + j * pitch + 2 * C, HS, lane);
  }
  __syncwarp();

  float dk[kDimsPerLane], dv[kDimsPerLane];
#pragma unroll
  for (int r = 0; r < kDimsPerLane; r++) dk[r] = dv[r] = 0.f;

  for (int i0 = br.row0; i0 < s.seq_len; i0 += kTile) {
    __syncthreads();
    load_tile(q_tile, head, pitch, i0, s.seq_len, HS);
    load_tile(dout_tile, dout_head, C, i0, s.seq_len, HS);
    // D and lse of the tile's rows: warp w does rows w, w + kWarps, ...
    for (int r = warp; r < kTile; r += kWarps) {
      int64_t i = i0 + r;
      float D = i < s.seq_len ? warp_dot(dout_head + i * C, out_head + i * C, HS, lane) : 0.f;
      if (lane == 0) {
        d_tile[r] = D;
        lse_tile[r] = i < s.seq_len ? lse_head[i] : 0.f;
      }
    }
    __syncthreads();
    if (!active || i0 + kTile - 1 < j) continue;  // uniform per warp

    const int i = i0 + lane;
    float p = 0.f, ds = 0.f;
    if (i >= j && i < s.seq_len) {
      p = expf(s.scale * dot(q_tile + lane * stride, k_rows[warp], HS) - lse_tile[lane]);
      ds = p * (dot(dout_tile + lane * stride, v_rows[warp], HS) - d_tile[lane]);
    }
    const int first = max(0, j - i0), queries = min(kTile, s.seq_len - i0);
    for (int ii = first; ii < queries; ii++) {
      float pi = __shfl_sync(kFullMask, p, ii);
      float dsi = __shfl_sync(kFullMask, ds, ii);
      const float* q = q_tile + ii * stride;
      const float* dy = dout_tile + ii * stride;
#pragma unroll
      for (int r = 0; r < kDimsPerLane; r++) {
        int d = lane + r * kWarp;
        if (d < HS) {
          dk[r] += dsi * q[d];
          dv[r] += pi * dy[d];
        }
      }
    }
  }
  if (!active) return;

  T* dk_row = dqkv + (br.b * s.seq_len + j) * pitch + C + br.h * HS;
  T* dv_row = dk_row + C;
#pragma unroll
  for (int r = 0; r < kDimsPerLane; r++) {
    int d = lane + r * kWarp;
    if (d < HS) {
      dk_row[d] = from_float<T>(s.scale * dk[r]);
      dv_row[d] = from_float<T>(dv[r]);
    }
  }
}

// Checks the sizes and returns the kernels' shape and grid (blocks); a grid
// of 0 means there is nothing to do.
Dims shape_for(int64_t B, int64_t T, int64_t NH, int64_t HS, unsigned int* blocks) {
  TANDEM_CHECK(HS >= 1 && HS <= kAttentionMaxHeadSize,
               "attention: the CUDA kernels take head sizes 1.." + std::to_string(kAttentionMaxHeadSize) +
                   ", got " + std::to_string(HS));
  TANDEM_CHECK(B >= 0 && T >= 0 && NH >= 1, "attention: bad sizes B=" + std::to_string(B) + " T=" +
                                                std::to_string(T) + " NH=" + std::to_string(NH));
  TANDEM_CHECK(T <= INT_MAX && NH <= INT_MAX, "attention: T or NH too large");
  int64_t row_blocks = (T + kWarps - 1) / kWarps;
  TANDEM_CHECK(B * NH * row_blocks <= INT_MAX, "attention: too many rows for one grid");
  *blocks = static_cast<unsigned int>(B * NH * row_blocks);
  return {static_cast<int>(T), static_cast<int>(NH), static_cast<int>(HS), static_cast<int>(row_blocks),
          1.f / sqrtf(static_cast<float>(HS))};
}

}  // namespace

void attention_forward(void* out, float* lse, const void* qkv, int64_t B, int64_t T, int64_t NH, int64_t HS,
                       DType dtype, cudaStream_t stream) {
  unsigned int blocks;
  Dims s = shape_for(B, T, NH, HS, &blocks);
  if (blocks == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T_,
                        forward_kernel<T_><<<blocks, kThreads, 0, stream>>>(
                            static_cast<T_*>(out), lse, static_cast<const T_*>(qkv), s));
  CUDA_CHECK_LAUNCH();
}

void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                        int64_t B, int64_t T, int64_t NH, int64_t HS, DType dtype, cudaStream_t stream) {
  unsigned int blocks;
  Dims s = shape_for(B, T, NH, HS, &blocks);
  if (blocks == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T_,
                        backward_dq_kernel<T_><<<blocks, kThreads, 0, stream>>>(
                            static_cast<T_*>(dqkv), static_cast<const T_*>(dout), static_cast<const T_*>(qkv),
                            static_cast<const T_*>(out), lse, s));
  CUDA_CHECK_LAUNCH();
  TANDEM_DISPATCH_FLOAT(dtype, T_,
                        backward_dkdv_kernel<T_><<<blocks, kThreads, 0, stream>>>(
                            static_cast<T_*>(dqkv), static_cast<const T_*>(dout), static_cast<const T_*>(qkv),
                            static_cast<const T_*>(out), lse, s));
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
