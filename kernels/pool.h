// 2-D pooling over NCHW activations, as PyTorch's nn.MaxPool2d, nn.AvgPool2d
// and nn.AdaptiveAvgPool2d(1) (global average pooling), forward and backward.
//
// Semantic choices (all PyTorch's):
// - Output size in floor mode (ceil_mode=False): P = (H + 2 * pad_h - R) /
//   stride_h + 1, rounded down; likewise Q. No dilation.
// - Padding is at most half the window (pad_h <= R / 2, pad_w <= S / 2, in
//   integers), as PyTorch requires; otherwise an error. With floor mode this
//   keeps at least one real input in every window.
// - Max pooling: padded positions never win (they count as -inf). Ties go to
//   the first maximum in row-major window order (strictly greater replaces),
//   and a NaN wins over any number (the last NaN of the window), as PyTorch
//   CPU. A window of only -inf picks its first real position. argmax (i32)
//   holds h * W + w of the winner within its (n, c) input plane, for the
//   backward, as PyTorch's indices.
// - Average pooling divides by R * S when count_include_pad (PyTorch's
//   default, true: padded zeros count), else by the real positions in the
//   window. No divisor_override. (A bare bool, against STYLE.md habit 4,
//   because callers were written against this signature; name it at the
//   call: /*count_include_pad=*/true.)
// - Global average pooling: out (N, C) = the mean over H * W.
//
// Backward functions overwrite dinp (Note [Gradient writes] in
// kernels/common.h); overlapping windows (stride < window) add up their
// contributions. dinp must not overlap dout.
//
// Dtypes: f32, or bf16 on CUDA (fp32 math, fp64 in the global average's
// sums); argmax is i32 on both. The CUDA kernels (kernels/cuda/pool.cu,
// ours rather than cuDNN's, which has no argmax) walk each window in the
// same order, so max and argmax equal the CPU's for the same values; their
// backwards gather per input value instead of scattering, so they are
// deterministic without atomics.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

// One pooling: input (N, C, H, W), window R x S moved by the strides over the
// input padded by pad_h rows above and below and pad_w columns left and
// right; output (N, C, P, Q). The strides have no default on purpose:
// PyTorch's default is the window (stride_h = R, stride_w = S), Conv2d's is 1.
struct Pool2dShape {
  int64_t N = 0, C = 0, H = 0, W = 0;
  int64_t R = 0, S = 0;               // window height and width
  int64_t stride_h = 0, stride_w = 0;
  int64_t pad_h = 0, pad_w = 0;
  // Output height and width (floor mode); 0 for a pooling that the checks
  // refuse (no stride, a window larger than the padded input), never a trap.
  int64_t P() const { return stride_h >= 1 && H + 2 * pad_h >= R ? (H + 2 * pad_h - R) / stride_h + 1 : 0; }
  int64_t Q() const { return stride_w >= 1 && W + 2 * pad_w >= S ? (W + 2 * pad_w - S) / stride_w + 1 : 0; }
};

namespace cpu {
void maxpool2d_forward(float* out, int32_t* argmax,    // (N, C, P, Q), (N, C, P, Q)
                       const float* inp,               // (N, C, H, W)
                       const Pool2dShape& shape);
void maxpool2d_backward(float* dinp,                   // (N, C, H, W) =
                        const float* dout, const int32_t* argmax,  // (N, C, P, Q), (N, C, P, Q)
                        const Pool2dShape& shape);
void avgpool2d_forward(float* out, const float* inp,   // (N, C, P, Q), (N, C, H, W)
                       const Pool2dShape& shape, bool count_include_pad);
void avgpool2d_backward(float* dinp, const float* dout,  // (N, C, H, W) =, (N, C, P, Q)
                        const Pool2dShape& shape, bool count_include_pad);
void global_avgpool_forward(float* out, const float* inp,  // (N, C), (N, C, H, W)
                            int64_t N, int64_t C, int64_t HW);
void global_avgpool_backward(float* dinp, const float* dout,  // (N, C, H, W) =, (N, C)
                             int64_t N, int64_t C, int64_t HW);
}  // namespace cpu

namespace cuda {
// The same shapes as cpu::, in `dtype` (f32 or bf16); argmax i32.
void maxpool2d_forward(void* out, int32_t* argmax, const void* inp, const Pool2dShape& shape, DType dtype,
                       CUstream_st* stream);
void maxpool2d_backward(void* dinp, const void* dout, const int32_t* argmax, const Pool2dShape& shape, DType dtype,
                        CUstream_st* stream);
void avgpool2d_forward(void* out, const void* inp, const Pool2dShape& shape, bool count_include_pad, DType dtype,
                       CUstream_st* stream);
void avgpool2d_backward(void* dinp, const void* dout, const Pool2dShape& shape, bool count_include_pad,
                        DType dtype, CUstream_st* stream);
void global_avgpool_forward(void* out, const void* inp, int64_t N, int64_t C, int64_t HW, DType dtype,
                            CUstream_st* stream);
void global_avgpool_backward(void* dinp, const void* dout, int64_t N, int64_t C, int64_t HW, DType dtype,
                             CUstream_st* stream);
}  // namespace cuda

namespace pool_detail {

// The tensor that decides the device: defined, f32 (or bf16 on CUDA).
inline void check_lead(const Tensor& t, const char* what, const char* op) {
  TANDEM_CHECK(t.defined(), std::string(op) + ": undefined " + what);
  check_float(t, op);
}

// A tensor of exactly `shape`, f32 on lead's device.
inline void check_shaped(const Tensor& t, const Tensor& lead, const Shape& shape, const char* what, const char* op) {
  TANDEM_CHECK(t.defined(), std::string(op) + ": undefined " + what);
  check_same_float(t, lead, op);
  TANDEM_CHECK(t.shape() == shape, std::string(op) + ": " + what + " is " + shape_str(t.shape()) + ", expected " +
                                       shape_str(shape));
}

inline void check_argmax(const Tensor& argmax, const Tensor& lead, const Shape& shape, const char* op) {
  TANDEM_CHECK(argmax.defined() && argmax.dtype() == DType::i32,
               std::string(op) + ": argmax must be a defined i32 tensor");
  check_same_device(argmax, lead, op);
  TANDEM_CHECK(argmax.shape() == shape, std::string(op) + ": argmax is " + shape_str(argmax.shape()) +
                                            ", expected " + shape_str(shape));
}

// Whether the elements of x and y share any byte (same device assumed).
inline bool overlaps(const Tensor& x, const Tensor& y) {
  auto lo_x = static_cast<const char*>(x.data()), lo_y = static_cast<const char*>(y.data());
  return x.nbytes() > 0 && y.nbytes() > 0 && lo_x < lo_y + y.nbytes() && lo_y < lo_x + x.nbytes();
}

inline void check_no_overlap(const Tensor& dinp, const Tensor& dout, const char* op) {
  TANDEM_CHECK(!overlaps(dinp, dout), std::string(op) + ": dinp overlaps dout");
}

inline std::string str(const Pool2dShape& s) {
  auto i = [](int64_t v) { return std::to_string(v); };
  return "input (" + i(s.N) + ", " + i(s.C) + ", " + i(s.H) + ", " + i(s.W) + "), window " + i(s.R) + "x" + i(s.S) +
         ", stride " + i(s.stride_h) + "x" + i(s.stride_w) + ", padding " + i(s.pad_h) + "x" + i(s.pad_w);
}

// The rules PyTorch applies to a pooling, with the offending numbers.
inline void check_shape(const Pool2dShape& s, const char* op) {
  std::string where = std::string(op) + ": " + str(s) + ": ";
  TANDEM_CHECK(s.N >= 0 && s.C >= 0, where + "N and C must be >= 0");
  TANDEM_CHECK(s.H >= 1 && s.W >= 1, where + "H and W must be >= 1");
  TANDEM_CHECK(s.R >= 1 && s.S >= 1, where + "the window must be at least 1x1");
  TANDEM_CHECK(s.stride_h >= 1 && s.stride_w >= 1,
               where + "strides must be >= 1 (PyTorch's default is the window: stride_h = R, stride_w = S)");
  TANDEM_CHECK(s.pad_h >= 0 && s.pad_w >= 0, where + "padding must be >= 0");
  TANDEM_CHECK(s.pad_h <= s.R / 2 && s.pad_w <= s.S / 2,
               where + "padding must be at most half the window (pad_h <= R / 2, pad_w <= S / 2), as in PyTorch");
  TANDEM_CHECK(s.H + 2 * s.pad_h >= s.R && s.W + 2 * s.pad_w >= s.S,
               where + "the window is larger than the padded input (the output would be empty)");
  TANDEM_CHECK(s.H * s.W <= std::numeric_limits<int32_t>::max(),
               where + "an input plane has more elements than an i32 argmax can index");
}

inline Shape input_shape(const Pool2dShape& s) { return {s.N, s.C, s.H, s.W}; }
inline Shape output_shape(const Pool2dShape& s) { return {s.N, s.C, s.P(), s.Q()}; }

// Global pooling: inp (N, C, H, W) with H, W >= 1; sets N, C, H * W.
inline void check_global_input(const Tensor& t, int64_t* N, int64_t* C, int64_t* HW, const char* what,
                               const char* op) {
  TANDEM_CHECK(t.ndim() == 4 && t.dim(2) >= 1 && t.dim(3) >= 1,
               std::string(op) + ": expected " + what + " (N, C, H, W) with H, W >= 1, got " + shape_str(t.shape()));
  *N = t.dim(0);
  *C = t.dim(1);
  *HW = t.dim(2) * t.dim(3);
}

// Global pooling: out or dout, (N, C) or (N, C, 1, 1).
inline void check_global_output(const Tensor& t, const Tensor& lead, int64_t N, int64_t C, const char* what,
                                const char* op) {
  TANDEM_CHECK(t.defined(), std::string(op) + ": undefined " + what);
  check_same_float(t, lead, op);
  TANDEM_CHECK(t.shape() == Shape({N, C}) || t.shape() == Shape({N, C, 1, 1}),
               std::string(op) + ": " + what + " is " + shape_str(t.shape()) + ", expected " +
                   shape_str({N, C}) + " or " + shape_str({N, C, 1, 1}));
}
}  // namespace pool_detail

// out = the maximum of each window of inp; argmax = where it was (h * W + w
// within the input plane). inp is (N, C, H, W) and out and argmax (N, C, P,
// Q), exactly as `shape` says.
inline void maxpool2d_forward(const Tensor& out, const Tensor& argmax, const Tensor& inp, const Pool2dShape& shape,
                              const Stream& stream) {
  const char* op = "maxpool2d_forward";
  pool_detail::check_lead(inp, "inp", op);
  pool_detail::check_shape(shape, op);
  pool_detail::check_shaped(inp, inp, pool_detail::input_shape(shape), "inp", op);
  pool_detail::check_shaped(out, inp, pool_detail::output_shape(shape), "out", op);
  pool_detail::check_argmax(argmax, inp, pool_detail::output_shape(shape), op);
  if (inp.device().is_cpu()) {
    cpu::maxpool2d_forward(out.data_as<float>(), argmax.data_as<int32_t>(), inp.data_as<float>(), shape);
  } else {
    TANDEM_CUDA_ONLY(cuda::maxpool2d_forward(out.data(), argmax.data_as<int32_t>(), inp.data(), shape, inp.dtype(),
                                             stream.cuda()));
  }
}

// dinp = zeros, then dinp[argmax] += dout for every output (overwrites dinp).
// argmax is the forward's; every value must lie in [0, H * W). The CPU
// checks that; CUDA, which gathers over each value's windows, ignores an
// argmax outside its own window instead.
inline void maxpool2d_backward(const Tensor& dinp, const Tensor& dout, const Tensor& argmax,
                               const Pool2dShape& shape, const Stream& stream) {
  const char* op = "maxpool2d_backward";
  pool_detail::check_lead(dout, "dout", op);
  pool_detail::check_shape(shape, op);
  pool_detail::check_shaped(dout, dout, pool_detail::output_shape(shape), "dout", op);
  pool_detail::check_shaped(dinp, dout, pool_detail::input_shape(shape), "dinp", op);
  pool_detail::check_argmax(argmax, dout, pool_detail::output_shape(shape), op);
  pool_detail::check_no_overlap(dinp, dout, op);
  if (dout.device().is_cpu()) {
    cpu::maxpool2d_backward(dinp.data_as<float>(), dout.data_as<float>(), argmax.data_as<int32_t>(), shape);
  } else {
    TANDEM_CUDA_ONLY(cuda::maxpool2d_backward(dinp.data(), dout.data(), argmax.data_as<int32_t>(), shape,
                                              dout.dtype(), stream.cuda()));
  }
}

// out = the mean of each window of inp (see count_include_pad above). inp
// is (N, C, H, W) and out (N, C, P, Q), exactly as `shape` says.
inline void avgpool2d_forward(const Tensor& out, const Tensor& inp, const Pool2dShape& shape,
                              bool count_include_pad, const Stream& stream) {
  const char* op = "avgpool2d_forward";
  pool_detail::check_lead(inp, "inp", op);
  pool_detail::check_shape(shape, op);
  pool_detail::check_shaped(inp, inp, pool_detail::input_shape(shape), "inp", op);
  pool_detail::check_shaped(out, inp, pool_detail::output_shape(shape), "out", op);
  if (inp.device().is_cpu()) {
    cpu::avgpool2d_forward(out.data_as<float>(), inp.data_as<float>(), shape, count_include_pad);
  } else {
    TANDEM_CUDA_ONLY(cuda::avgpool2d_forward(out.data(), inp.data(), shape, count_include_pad, inp.dtype(),
                                             stream.cuda()));
  }
}

// dinp = the sum over the windows that hold each input of dout / divisor
// (overwritten); count_include_pad as in the forward.
inline void avgpool2d_backward(const Tensor& dinp, const Tensor& dout, const Pool2dShape& shape,
                               bool count_include_pad, const Stream& stream) {
  const char* op = "avgpool2d_backward";
  pool_detail::check_lead(dout, "dout", op);
  pool_detail::check_shape(shape, op);
  pool_detail::check_shaped(dout, dout, pool_detail::output_shape(shape), "dout", op);
  pool_detail::check_shaped(dinp, dout, pool_detail::input_shape(shape), "dinp", op);
  pool_detail::check_no_overlap(dinp, dout, op);
  if (dout.device().is_cpu()) {
    cpu::avgpool2d_backward(dinp.data_as<float>(), dout.data_as<float>(), shape, count_include_pad);
  } else {
    TANDEM_CUDA_ONLY(cuda::avgpool2d_backward(dinp.data(), dout.data(), shape, count_include_pad, dout.dtype(),
                                              stream.cuda()));
  }
}

// out (N, C) or (N, C, 1, 1) = the mean of each (n, c) plane of inp (N, C, H, W).
inline void global_avgpool_forward(const Tensor& out, const Tensor& inp, const Stream& stream) {
  const char* op = "global_avgpool_forward";
  pool_detail::check_lead(inp, "inp", op);
  int64_t N, C, HW;
  pool_detail::check_global_input(inp, &N, &C, &HW, "inp", op);
  pool_detail::check_global_output(out, inp, N, C, "out", op);
  if (inp.device().is_cpu()) {
    cpu::global_avgpool_forward(out.data_as<float>(), inp.data_as<float>(), N, C, HW);
  } else {
    TANDEM_CUDA_ONLY(cuda::global_avgpool_forward(out.data(), inp.data(), N, C, HW, inp.dtype(), stream.cuda()));
  }
}

// dinp (N, C, H, W) = dout / (H * W), broadcast over each plane (overwritten);
// dout is (N, C) or (N, C, 1, 1).
inline void global_avgpool_backward(const Tensor& dinp, const Tensor& dout, const Stream& stream) {
  const char* op = "global_avgpool_backward";
  pool_detail::check_lead(dout, "dout", op);
  int64_t N, C, HW;
  TANDEM_CHECK(dinp.defined(), std::string(op) + ": undefined dinp");
  check_same_float(dinp, dout, op);
  pool_detail::check_global_input(dinp, &N, &C, &HW, "dinp", op);
  pool_detail::check_global_output(dout, dout, N, C, "dout", op);
  pool_detail::check_no_overlap(dinp, dout, op);
  if (dout.device().is_cpu()) {
    cpu::global_avgpool_backward(dinp.data_as<float>(), dout.data_as<float>(), N, C, HW);
  } else {
    TANDEM_CUDA_ONLY(cuda::global_avgpool_backward(dinp.data(), dout.data(), N, C, HW, dout.dtype(), stream.cuda()));
  }
}

}  // namespace tandem::kernels
