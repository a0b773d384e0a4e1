// CUDA 2-D pooling, f32 and bf16 storage, fp32 math (fp64 in the global
// average's long sums). Semantics are kernels/pool.h's.
//
// Forwards: one thread per output, over its window in row-major order (so
// ties and NaN go exactly as on the CPU). Backwards: one thread per INPUT
// value, gathering from the outputs whose windows hold it, in the order
// (p, q) ascending that the CPU's scatter adds them in. Gathering writes
// each dinp value once: no zeroing pass, no atomics, and the same bits run
// to run (a scatter with atomicAdd would add overlapping windows in
// whatever order the threads arrive). Global average pooling: one warp per
// (n, c) plane.
//
// Indexing is 32-bit inside a plane (H * W < 2^31, checked by the header;
// the padded sizes below, here) and 64-bit across planes. Flat indices are
// split with FastDiv, since a GPU divides integers in software.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/pool.h"

namespace tandem::kernels::cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kPlanesPerBlock = 8;  // global pooling: one warp per plane
constexpr int64_t kMaxBlocks = 65535;

// n / d for 0 <= n < 2^31 and 1 <= d < 2^31 by a multiply-high, an add and
// a shift (Granlund & Montgomery, "Division by invariant integers using
// multiplication", 1994), instead of the ~20-instruction software division:
// a backward gather divides six times per input value. With s = ceil(log2
// d), magic = floor(2^32 * (2^s - d) / d) + 1 < 2^32.
struct FastDiv {
  uint32_t d = 1, magic = 1, shift = 0;

  FastDiv() = default;
  explicit FastDiv(int64_t divisor) : d(static_cast<uint32_t>(divisor)) {
    while ((uint64_t{1} << shift) < d) shift++;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, magic) + n) >> shift; }
};

// A pooling as the kernels see it: every size below 2^31 (pool_geometry
// checks), window_size = R * S in float (the count_include_pad divisor).
struct Geometry {
  int H, W, R, S, stride_h, stride_w, pad_h, pad_w, P, Q;
  FastDiv div_H, div_W, div_P, div_Q, div_stride_h, div_stride_w;
  float window_size;
};

Geometry pool_geometry(const Pool2dShape& s) {
  const int64_t limit = INT_MAX;
  // The window fits the padded input (checked by the header), so R, S, P
  // and Q stay below these too.
  TANDEM_CHECK(s.H + 2 * s.pad_h <= limit && s.W + 2 * s.pad_w <= limit && s.stride_h <= limit &&
                   s.stride_w <= limit,
               "pool on CUDA: " + pool_detail::str(s) + ": padded sizes and strides must stay below 2^31");
  auto i32 = [](int64_t v) { return static_cast<int>(v); };
  return {i32(s.H),        i32(s.W),        i32(s.R),          i32(s.S),           i32(s.stride_h),
          i32(s.stride_w), i32(s.pad_h),    i32(s.pad_w),      i32(s.P()),         i32(s.Q()),
          FastDiv(s.H),    FastDiv(s.W),    FastDiv(s.P()),    FastDiv(s.Q()),     FastDiv(s.stride_h),
          FastDiv(s.stride_w), static_cast<float>(s.R * s.S)};
}

// Flat index k of an (planes, rows, cols) array as (plane, row, col).
struct Index3 {
  int64_t plane;
  int row, col;
};

__device__ __forceinline__ Index3 split(int64_t k, const FastDiv& rows, const FastDiv& cols) {
  if (k <= INT_MAX) {  // every tensor below 8 GiB of f32
    uint32_t t = cols.div(static_cast<uint32_t>(k)), plane = rows.div(t);
    return {plane, static_cast<int>(t - plane * rows.d), static_cast<int>(k - int64_t{t} * cols.d)};
  }
  int64_t t = k / cols.d, plane = t / rows.d;
  return {plane, static_cast<int>(t - plane * rows.d), static_cast<int>(k - t * cols.d)};
}

// The real (unpadded) rows [h_begin, h_end) and columns [w_begin, w_end)
// under the window of output (p, q); never empty (kernels/pool.h).
struct Window {
  int h_begin, h_end, w_begin, w_end;
  __device__ int count() const { return (h_end - h_begin) * (w_end - w_begin); }
};

__device__ __forceinline__ Window window_at(const Geometry& g, int p, int q) {
  int h0 = p * g.stride_h - g.pad_h, w0 = q * g.stride_w - g.pad_w;
  return {max(h0, 0), min(h0 + g.R, g.H), max(w0, 0), min(w0 + g.S, g.W)};
}

// The outputs whose windows hold input row (or column) x: [*first, *last],
// empty when *first > *last (rows that floor mode never pools). Window p
// covers padded rows [p * stride, p * stride + R).
__device__ __forceinline__ void windows_over(int x, int pad, int R, const FastDiv& stride, int P, int* first,
                                             int* last) {
  int padded = x + pad;
  *first = padded < R ? 0 : static_cast<int>(stride.div(padded - R)) + 1;
  *last = min(static_cast<int>(stride.div(padded)), P - 1);
}

template <typename T>
__global__ void maxpool_forward_kernel(T* __restrict__ out, int32_t* __restrict__ argmax, const T* __restrict__ inp,
                                       Geometry g, int64_t total) {
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < total; k += int64_t{gridDim.x} * blockDim.x) {
    Index3 o = split(k, g.div_P, g.div_Q);
    Window win = window_at(g, o.row, o.col);
    const T* x = inp + o.plane * g.H * g.W;
    // Strictly greater keeps the first of equal maxima; a NaN replaces
    // anything; padding is never looked at (kernels/pool.h).
    float best = -INFINITY;
    int where = win.h_begin * g.W + win.w_begin;
    for (int h = win.h_begin; h < win.h_end; h++) {
      for (int w = win.w_begin; w < win.w_end; w++) {
        float v = to_float(x[h * g.W + w]);
        if (v > best || isnan(v)) {
          best = v;
          where = h * g.W + w;
        }
      }
    }
    out[k] = from_float<T>(best);  // one of the inputs: exact in T
    argmax[k] = where;
  }
}

// dinp = the sum of dout over the outputs whose argmax is this value. An
// argmax that the forward did not produce (outside its window) is never
// matched, so it is ignored rather than written out of bounds.
template <typename T>
__global__ void maxpool_backward_kernel(T* __restrict__ dinp, const T* __restrict__ dout,
                                        const int32_t* __restrict__ argmax, Geometry g, int64_t total) {
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < total; k += int64_t{gridDim.x} * blockDim.x) {
    Index3 in = split(k, g.div_H, g.div_W);
    int p_first, p_last, q_first, q_last;
    windows_over(in.row, g.pad_h, g.R, g.div_stride_h, g.P, &p_first, &p_last);
    windows_over(in.col, g.pad_w, g.S, g.div_stride_w, g.Q, &q_first, &q_last);
    const int64_t plane = in.plane * g.P * g.Q;
    const int32_t self = in.row * g.W + in.col;
    float sum = 0.f;
    for (int p = p_first; p <= p_last; p++)
      for (int q = q_first; q <= q_last; q++)
        if (argmax[plane + p * int64_t{g.Q} + q] == self) sum += to_float(dout[plane + p * int64_t{g.Q} + q]);
    dinp[k] = from_float<T>(sum);
  }
}

template <typename T>
__global__ void avgpool_forward_kernel(T* __restrict__ out, const T* __restrict__ inp, Geometry g,
                                       bool count_include_pad, int64_t total) {
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < total; k += int64_t{gridDim.x} * blockDim.x) {
    Index3 o = split(k, g.div_P, g.div_Q);
    Window win = window_at(g, o.row, o.col);
    const T* x = inp + o.plane * g.H * g.W;
    float sum = 0.f;
    for (int h = win.h_begin; h < win.h_end; h++)
      for (int w = win.w_begin; w < win.w_end; w++) sum += to_float(x[h * g.W + w]);
    float divisor = count_include_pad ? g.window_size : static_cast<float>(win.count());
    out[k] = from_float<T>(__fdiv_rn(sum, divisor));
  }
}

// dinp = the sum over the windows that hold this value of dout / divisor.
// Each term is rounded as the CPU's fp64 quotient rounded to fp32 (the
// same number: a correctly rounded fp32 division, for divisors below 2^24)
// and added in the CPU's order, so in f32 the result is the CPU's.
template <typename T>
__global__ void avgpool_backward_kernel(T* __restrict__ dinp, const T* __restrict__ dout, Geometry g,
                                        bool count_include_pad, int64_t total) {
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < total; k += int64_t{gridDim.x} * blockDim.x) {
    Index3 in = split(k, g.div_H, g.div_W);
    int p_first, p_last, q_first, q_last;
    windows_over(in.row, g.pad_h, g.R, g.div_stride_h, g.P, &p_first, &p_last);
    windows_over(in.col, g.pad_w, g.S, g.div_stride_w, g.Q, &q_first, &q_last);
    const T* dy = dout + in.plane * g.P * g.Q;
    float sum = 0.f;
    for (int p = p_first; p <= p_last; p++) {
      for (int q = q_first; q <= q_last; q++) {
        float divisor = count_include_pad ? g.window_size : static_cast<float>(window_at(g, p, q).count());
        sum += __fdiv_rn(to_float(dy[p * int64_t{g.Q} + q]), divisor);
      }
    }
    dinp[k] = from_float<T>(sum);
  }
}

// out[plane] = mean of the plane's HW values. Each lane sums in double (a
// plane can hold 50,000 values), then a fixed shuffle tree: deterministic.
template <typename T>
__global__ void global_avgpool_forward_kernel(T* __restrict__ out, const T* __restrict__ inp, int64_t planes,
                                              int64_t HW) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t plane = blockIdx.x * int64_t{kPlanesPerBlock} + threadIdx.x / kWarp; plane < planes;
       plane += int64_t{gridDim.x} * kPlanesPerBlock) {
    const T* x = inp + plane * HW;
    double sum = 0;
#pragma unroll 4
    for (int64_t i = lane; i < HW; i += kWarp) sum += to_float(x[i]);
    for (int offset = kWarp / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) out[plane] = from_float<T>(static_cast<float>(sum / double(HW)));
  }
}

// dinp = dout[plane] / HW over each plane (overwritten), the quotient
// rounded as the CPU's.
template <typename T>
__global__ void global_avgpool_backward_kernel(T* __restrict__ dinp, const T* __restrict__ dout, int64_t planes,
                                               int64_t HW) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t plane = blockIdx.x * int64_t{kPlanesPerBlock} + threadIdx.x / kWarp; plane < planes;
       plane += int64_t{gridDim.x} * kPlanesPerBlock) {
    T g = from_float<T>(static_cast<float>(double(to_float(dout[plane])) / double(HW)));
    T* dx = dinp + plane * HW;
    for (int64_t i = lane; i < HW; i += kWarp) dx[i] = g;
  }
}

unsigned int plane_grid(int64_t planes) {
  return static_cast<unsigned int>(std::clamp<int64_t>((planes + kPlanesPerBlock - 1) / kPlanesPerBlock, 1, kMaxBlocks));
}

}  // namespace

void maxpool2d_forward(void* out, int32_t* argmax, const void* inp, const Pool2dShape& shape, DType dtype,
                       cudaStream_t stream) {
  Geometry g = pool_geometry(shape);
  const int64_t total = shape.N * shape.C * shape.P() * shape.Q();
  if (total == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T, maxpool_forward_kernel<T><<<grid_for(total), kBlock, 0, stream>>>(
                                      static_cast<T*>(out), argmax, static_cast<const T*>(inp), g, total));
  CUDA_CHECK_LAUNCH();
}

void maxpool2d_backward(void* dinp, const void* dout, const int32_t* argmax, const Pool2dShape& shape, DType dtype,
                        cudaStream_t stream) {
  Geometry g = pool_geometry(shape);
  const int64_t total = shape.N * shape.C * shape.H * shape.W;
  if (total == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T, maxpool_backward_kernel<T><<<grid_for(total), kBlock, 0, stream>>>(
                                      static_cast<T*>(dinp), static_cast<const T*>(dout), argmax, g, total));
  CUDA_CHECK_LAUNCH();
}

void avgpool2d_forward(void* out, const void* inp, const Pool2dShape& shape, bool count_include_pad, DType dtype,
                       cudaStream_t stream) {
  Geometry g = pool_geometry(shape);
  const int64_t total = shape.N * shape.C * shape.P() * shape.Q();
  if (total == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T, avgpool_forward_kernel<T><<<grid_for(total), kBlock, 0, stream>>>(
                                      static_cast<T*>(out), static_cast<const T*>(inp), g, count_include_pad,
                                      total));
  CUDA_CHECK_LAUNCH();
}

void avgpool2d_backward(void* dinp, const void* dout, const Pool2dShape& shape, bool count_include_pad,
                        DType dtype, cudaStream_t stream) {
  Geometry g = pool_geometry(shape);
  const int64_t total = shape.N * shape.C * shape.H * shape.W;
  if (total == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T, avgpool_backward_kernel<T><<<grid_for(total), kBlock, 0, stream>>>(
                                      static_cast<T*>(dinp), static_cast<const T*>(dout), g, count_include_pad,
                                      total));
  CUDA_CHECK_LAUNCH();
}

void global_avgpool_forward(void* out, const void* inp, int64_t N, int64_t C, int64_t HW, DType dtype,
                            cudaStream_t stream) {
  const int64_t planes = N * C;
  if (planes == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T,
                        global_avgpool_forward_kernel<T><<<plane_grid(planes), kPlanesPerBlock * kWarp, 0, stream>>>(
                            static_cast<T*>(out), static_cast<const T*>(inp), planes, HW));
  CUDA_CHECK_LAUNCH();
}

void global_avgpool_backward(void* dinp, const void* dout, int64_t N, int64_t C, int64_t HW, DType dtype,
                             cudaStream_t stream) {
  const int64_t planes = N * C;
  if (planes == 0) return;
  TANDEM_DISPATCH_FLOAT(dtype, T,
                        global_avgpool_backward_kernel<T><<<plane_grid(planes), kPlanesPerBlock * kWarp, 0, stream>>>(
                            static_cast<T*>(dinp), static_cast<const T*>(dout), planes, HW));
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
