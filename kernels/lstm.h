// One LSTM layer over a whole sequence, PyTorch nn.LSTM semantics (one
// direction, one layer, no projection). Per step t = 1 .. T, from h_0 = h0
// and c_0 = c0 (zeros when undefined):
//
//   gates = x_t @ w_ih^T + b_ih + h_{t-1} @ w_hh^T + b_hh      (N, 4H): i, f, g, o
//   i = sigmoid(gates_i)  f = sigmoid(gates_f)  g = tanh(gates_g)  o = sigmoid(gates_o)
//   c_t = f * c_{t-1} + i * g
//   h_t = o * tanh(c_t)
//
// y holds h_1 .. h_T (y[t-1] = h_t), and hT = h_T, cT = c_T.
//
// Sequence-first layout, as cuDNN and PyTorch's default (batch_first=False):
//   x (T, N, I), y (T, N, H), h0, c0, hT, cT (N, H)
//   w_ih (4H, I), w_hh (4H, H), b_ih (4H), b_hh (4H); the 4H rows are the
//   gates i, f, g, o in that order, H rows each (PyTorch's weight_ih_l0 etc.).
//
//   forward:   y, hT, cT and the reserve                            overwritten
//   backward:  dx, dh0, dc0                                         overwritten
//              dw_ih, dw_hh, db_ih, db_hh                           +=
// See Note [Gradient writes] in kernels/common.h.
//
// Two caller-allocated f32 buffers, because kernels never allocate:
// - the reserve (cuDNN's "reserve space"): what forward keeps for backward,
//   lstm_reserve_elems(s, dtype, device) floats. It is written by forward and
//   read by the matching backward (same x, h0, c0 and weights); keep it in
//   between. On CUDA, cuDNN's backward writes into it too (its reserve
//   space is in/out): run one backward per forward.
// - the workspace: scratch of one call, lstm_workspace_elems(s, dtype,
//   device) floats; its contents mean nothing between calls.
// The CPU path (the fp32 reference) is OpenBLAS sgemm plus plain loops; see
// kernels/cpu/lstm.cpp. The CUDA path (kernels/cuda/lstm.cu) is cuDNN's RNN
// API on f32 or f16 tensors (bf16 with cuDNN 9.13 or later) with fp32 math,
// our PyTorch-layout weights copied in and out of cuDNN's weight space (Note
// [LSTM weight space]); f32 runs without TF32. cuDNN is loaded at run time:
// without it a CUDA call is a UserError saying what to install (Note [cuDNN
// is loaded lazily] in kernels/cuda/cudnn_library.h).
#pragma once

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

// The sizes of one layer over one sequence. Zero-initialized, so a field left
// out fails check_lstm_shape instead of reading garbage.
struct LstmShape {
  int64_t T = 0;  // time steps
  int64_t N = 0;  // batch
  int64_t I = 0;  // input features
  int64_t H = 0;  // hidden (and cell) features

  // "T=7 N=3 I=5 H=4", for messages.
  std::string str() const {
    std::string out;  // appended piece by piece, as Conv2dShape::str (GCC 12 -Wrestrict)
    auto field = [&](const char* name, int64_t v) { out.append(name).append(std::to_string(v)); };
    field("T=", T), field(" N=", N), field(" I=", I), field(" H=", H);
    return out;
  }
};

// The parameters of the layer, as nn.LSTM names them (weight_ih_l0, ...).
struct LstmWeights {
  Tensor w_ih;  // (4H, I)
  Tensor w_hh;  // (4H, H)
  Tensor b_ih;  // (4H)
  Tensor b_hh;  // (4H)
};

// Their gradients, each accumulated into (+=).
struct LstmGrads {
  Tensor dw_ih;  // (4H, I)
  Tensor dw_hh;  // (4H, H)
  Tensor db_ih;  // (4H)
  Tensor db_hh;  // (4H)
};

// A hidden and cell state pair, (N, H) each: h0/c0 and hT/cT in forward,
// their gradients in backward. Where the calls below say so, either may be
// undefined.
struct LstmState {
  Tensor h;
  Tensor c;
};

// Throws UserError, naming the shape, unless T, N, I and H are all positive.
inline void check_lstm_shape(const LstmShape& s) {
  if (s.T < 1 || s.N < 1 || s.I < 1 || s.H < 1)
    throw UserError("lstm: T, N, I and H must all be positive (" + s.str() + ")");
}

// Floats of reserve on the CPU: per step the four gate activations (N, 4H)
// and tanh(c_t) (N, H), and the cell states c_0 .. c_T ((T + 1) N H). The
// CPU layout is in kernels/cpu/lstm.cpp.
inline int64_t lstm_reserve_elems(const LstmShape& s) { return s.N * s.H * (6 * s.T + 1); }

// Floats of workspace on the CPU (the same buffer serves forward and
// backward): the gate gradients of every step (T, N, 4H), which backward
// turns into dx and the weight gradients with one large GEMM each, plus the
// running dh and dc (N, H each). The CPU forward computes its gates in place
// in the reserve and leaves the workspace alone; it is checked anyway, so
// that one buffer sized here is right for both calls.
inline int64_t lstm_workspace_elems(const LstmShape& s) { return s.N * (4 * s.H * s.T + 2 * s.H); }

// Multiply-adds of the forward's GEMMs, times two (backward costs about twice
// that). The gates' elementwise work is not counted.
inline double lstm_flops(const LstmShape& s) {
  return 2.0 * static_cast<double>(s.T * s.N) * static_cast<double>(4 * s.H) * static_cast<double>(s.I + s.H);
}

namespace cpu {
// h0, c0, hT, cT: null for zeros (inputs) or to skip (outputs).
// reserve: lstm_reserve_elems(s) floats. No workspace: the gates are computed
// in place in the reserve.
void lstm_forward(float* y, float* hT, float* cT, float* reserve,                       // (T,N,H), (N,H), (N,H)
                  const float* x, const float* h0, const float* c0,                     // (T,N,I), (N,H), (N,H)
                  const float* w_ih, const float* w_hh, const float* b_ih, const float* b_hh,  // (4H,I), (4H,H), (4H)
                  const LstmShape& s);
// dh0, dc0: null to skip; dhT, dcT: null for zeros; h0: null when forward
// ran with zeros. dx, dh0, dc0 are overwritten; dw_ih, dw_hh, db_ih, db_hh
// added to. workspace: lstm_workspace_elems(s) floats.
void lstm_backward(float* dx, float* dh0, float* dc0,                                   // (T,N,I), (N,H), (N,H)
                   float* dw_ih, float* dw_hh, float* db_ih, float* db_hh,              // (4H,I), (4H,H), (4H)
                   const float* dy, const float* dhT, const float* dcT,                 // (T,N,H), (N,H), (N,H)
                   const float* x, const float* h0, const float* w_ih, const float* w_hh,
                   const float* y, const float* reserve, const LstmShape& s, float* workspace);
}  // namespace cpu

namespace cuda {
// Every pointer on CUDA device `device`, of `dtype` (f32, f16; bf16 with
// cuDNN 9.13+). Null h0, c0, dhT, dcT: zeros; null hT, cT, dh0, dc0: not
// written. reserve and workspace: lstm_reserve_bytes and
// lstm_workspace_bytes bytes (Note [LSTM buffers on CUDA]), which make the
// plan (Note [LSTM plans]) on first use.
int64_t lstm_reserve_bytes(const LstmShape& s, DType dtype, int device);
int64_t lstm_workspace_bytes(const LstmShape& s, DType dtype, int device);
void lstm_forward(void* y, void* hT, void* cT, void* reserve, const void* x, const void* h0, const void* c0,
                  const void* w_ih, const void* w_hh, const void* b_ih, const void* b_hh, const LstmShape& s,
                  DType dtype, void* workspace, int device, CUstream_st* stream);
// The weights are not needed: forward left them in the reserve.
void lstm_backward(void* dx, void* dh0, void* dc0, void* dw_ih, void* dw_hh, void* db_ih, void* db_hh,
                   const void* dy, const void* dhT, const void* dcT, const void* x, const void* h0, const void* y,
                   void* reserve, const LstmShape& s, DType dtype, void* workspace, int device, CUstream_st* stream);
// out (B, A, C) = in (A, B, C), elements of `elem_bytes` (2 or 4) moved as bits.
void lstm_swap_leading(void* out, const void* in, int64_t A, int64_t B, int64_t C, size_t elem_bytes,
                       CUstream_st* stream);
}  // namespace cuda

// Floats of reserve and of workspace (f32 tensors) for tensors of `dtype` on
// `device`: the CPU sizes above whatever the dtype (the CPU takes f32 only,
// and its check says so); on CUDA cuDNN's buffers and the weight spaces of
// Note [LSTM buffers on CUDA], rounded up to floats.
inline int64_t lstm_reserve_elems(const LstmShape& s, DType dtype, Device device) {
  if (device.is_cpu()) return lstm_reserve_elems(s);
  check_lstm_shape(s);
  int64_t bytes = 0;
  TANDEM_CUDA_ONLY(bytes = cuda::lstm_reserve_bytes(s, dtype, device.index));
  return scratch_floats(bytes);
}
inline int64_t lstm_workspace_elems(const LstmShape& s, DType dtype, Device device) {
  if (device.is_cpu()) return lstm_workspace_elems(s);
  check_lstm_shape(s);
  int64_t bytes = 0;
  TANDEM_CUDA_ONLY(bytes = cuda::lstm_workspace_bytes(s, dtype, device.index));
  return scratch_floats(bytes);
}

namespace lstm_detail {

inline const float* in_or_null(const Tensor& t) { return t.defined() ? t.data_as<float>() : nullptr; }
inline float* out_or_null(const Tensor& t) { return t.defined() ? t.data_as<float>() : nullptr; }
inline void* or_null(const Tensor& t) { return t.defined() ? t.data() : nullptr; }

// The shape, then every tensor, the reserve and the workspace
// (kernels/common.h), whose sizes depend on the device and dtype. Returns
// true for the CUDA path.
inline bool check_call(const LstmShape& s, std::initializer_list<TensorArg> tensors, const Tensor& reserve,
                       const Tensor& workspace, const char* op) {
  check_lstm_shape(s);
  const DType dtype = check_kernel_tensors(op, "lstm", s.str(), tensors);
  const Device device = tensors.begin()->t->device();
  check_scratch(op, tensors,
                {{&reserve, "reserve", lstm_reserve_elems(s, dtype, device), "lstm_reserve_elems"},
                 {&workspace, "workspace", lstm_workspace_elems(s, dtype, device), "lstm_workspace_elems"}});
  return device.is_cuda();
}

}  // namespace lstm_detail

// y, final_state.h (hT) and final_state.c (cT) = the layer over x from initial.h (h0)
// and initial.c (c0); either initial state may be undefined (zeros), either
// final one undefined (not written). Writes the reserve for lstm_backward.
// No output may overlap an input, another output or the workspace.
inline void lstm_forward(const Tensor& y /* (T, N, H) */, const LstmState& final_state /* (N, H) each, or undefined */,
                         const Tensor& reserve /* lstm_reserve_elems(s, ...) */, const Tensor& x /* (T, N, I) */,
                         const LstmState& initial /* (N, H) each, or undefined: zeros */, const LstmWeights& w,
                         const LstmShape& s, const Tensor& workspace /* lstm_workspace_elems(s, ...) */,
                         const Stream& stream) {
  const bool on_cuda = lstm_detail::check_call(s,
                                              {{&y, {s.T, s.N, s.H}, "y", ArgKind::output},
                                               {&final_state.h, {s.N, s.H}, "hT", ArgKind::optional_output},
                                               {&final_state.c, {s.N, s.H}, "cT", ArgKind::optional_output},
                                               {&x, {s.T, s.N, s.I}, "x", ArgKind::input},
                                               {&initial.h, {s.N, s.H}, "h0", ArgKind::optional_input},
                                               {&initial.c, {s.N, s.H}, "c0", ArgKind::optional_input},
                                               {&w.w_ih, {4 * s.H, s.I}, "w_ih", ArgKind::input},
                                               {&w.w_hh, {4 * s.H, s.H}, "w_hh", ArgKind::input},
                                               {&w.b_ih, {4 * s.H}, "b_ih", ArgKind::input},
                                               {&w.b_hh, {4 * s.H}, "b_hh", ArgKind::input}},
                                              reserve, workspace, "lstm_forward");
  using lstm_detail::in_or_null, lstm_detail::out_or_null, lstm_detail::or_null;
  if (on_cuda) {
    TANDEM_CUDA_ONLY(cuda::lstm_forward(y.data(), or_null(final_state.h), or_null(final_state.c), reserve.data(),
                                        x.data(), or_null(initial.h), or_null(initial.c), w.w_ih.data(),
                                        w.w_hh.data(), w.b_ih.data(), w.b_hh.data(), s, x.dtype(), workspace.data(),
                                        x.device().index, stream.cuda()));
    return;
  }
  cpu::lstm_forward(y.data_as<float>(), out_or_null(final_state.h), out_or_null(final_state.c),
                    reserve.data_as<float>(), x.data_as<float>(), in_or_null(initial.h), in_or_null(initial.c),
                    w.w_ih.data_as<float>(), w.w_hh.data_as<float>(), w.b_ih.data_as<float>(),
                    w.b_hh.data_as<float>(), s);
}

// The gradients of a loss L, given dy = dL/dy, dfinal = (dL/dhT, dL/dcT),
// each of those two undefined for zeros:
//   dx = dL/dx (overwritten, whatever it held);
//   dinitial.h = dL/dh0, dinitial.c = dL/dc0 (overwritten; undefined: skipped);
//   grads.dw_ih += dL/dw_ih, and so on for dw_hh, db_ih, db_hh (the two bias
//   gradients are equal: both biases enter the gates as one sum).
// x, initial.h, w, y and the reserve are as the forward saw or left them
// (initial.h undefined exactly when it was there); initial.c is not needed
// (the reserve holds c_0) and is not read, nor are w.b_ih and w.b_hh: each
// may be undefined. No output may overlap an input,
// another output or the workspace.
inline void lstm_backward(const Tensor& dx /* (T, N, I) */, const LstmState& dinitial /* (N, H) each, or undefined */,
                          const LstmGrads& grads, const Tensor& dy /* (T, N, H) */,
                          const LstmState& dfinal /* (N, H) each, or undefined: zeros */,
                          const Tensor& x /* (T, N, I) */, const LstmState& initial /* .h (N, H) or undefined */,
                          const LstmWeights& w /* .w_ih, .w_hh */, const Tensor& y /* (T, N, H) */,
                          const Tensor& reserve /* lstm_reserve_elems(s, ...) */, const LstmShape& s,
                          const Tensor& workspace /* lstm_workspace_elems(s, ...) */, const Stream& stream) {
  const bool on_cuda = lstm_detail::check_call(s,
                                              {{&dx, {s.T, s.N, s.I}, "dx", ArgKind::output},
                                               {&dinitial.h, {s.N, s.H}, "dh0", ArgKind::optional_output},
                                               {&dinitial.c, {s.N, s.H}, "dc0", ArgKind::optional_output},
                                               {&grads.dw_ih, {4 * s.H, s.I}, "dw_ih", ArgKind::output},
                                               {&grads.dw_hh, {4 * s.H, s.H}, "dw_hh", ArgKind::output},
                                               {&grads.db_ih, {4 * s.H}, "db_ih", ArgKind::output},
                                               {&grads.db_hh, {4 * s.H}, "db_hh", ArgKind::output},
                                               {&dy, {s.T, s.N, s.H}, "dy", ArgKind::input},
                                               {&dfinal.h, {s.N, s.H}, "dhT", ArgKind::optional_input},
                                               {&dfinal.c, {s.N, s.H}, "dcT", ArgKind::optional_input},
                                               {&x, {s.T, s.N, s.I}, "x", ArgKind::input},
                                               {&initial.h, {s.N, s.H}, "h0", ArgKind::optional_input},
                                               {&w.w_ih, {4 * s.H, s.I}, "w_ih", ArgKind::input},
                                               {&w.w_hh, {4 * s.H, s.H}, "w_hh", ArgKind::input},
                                               {&y, {s.T, s.N, s.H}, "y", ArgKind::input}},
                                              reserve, workspace, "lstm_backward");
  using lstm_detail::in_or_null, lstm_detail::out_or_null, lstm_detail::or_null;
  if (on_cuda) {
    TANDEM_CUDA_ONLY(cuda::lstm_backward(dx.data(), or_null(dinitial.h), or_null(dinitial.c), grads.dw_ih.data(),
                                         grads.dw_hh.data(), grads.db_ih.data(), grads.db_hh.data(), dy.data(),
                                         or_null(dfinal.h), or_null(dfinal.c), x.data(), or_null(initial.h),
                                         y.data(), reserve.data(), s, x.dtype(), workspace.data(), x.device().index,
                                         stream.cuda()));
    return;
  }
  cpu::lstm_backward(dx.data_as<float>(), out_or_null(dinitial.h), out_or_null(dinitial.c),
                     grads.dw_ih.data_as<float>(), grads.dw_hh.data_as<float>(), grads.db_ih.data_as<float>(),
                     grads.db_hh.data_as<float>(), dy.data_as<float>(), in_or_null(dfinal.h), in_or_null(dfinal.c),
                     x.data_as<float>(), in_or_null(initial.h), w.w_ih.data_as<float>(), w.w_hh.data_as<float>(),
                     y.data_as<float>(), reserve.data_as<float>(), s, workspace.data_as<float>());
}

// out (B, A, C) = in (A, B, C), contiguous: between the batch-first
// (B, T, .) activations of a module and the sequence-first (T, B, .) ones
// these kernels take (runtime/lstm_layer.h). Any dtype; out must not
// overlap in.
inline void lstm_swap_leading(const Tensor& out, const Tensor& in, const Stream& stream) {
  TANDEM_CHECK(in.ndim() == 3, "lstm_swap_leading: in must be 3-D, got " + shape_str(in.shape()));
  const int64_t A = in.dim(0), B = in.dim(1), C = in.dim(2);
  TANDEM_CHECK(out.shape() == Shape({B, A, C}), "lstm_swap_leading: out must be " + shape_str({B, A, C}) +
                                                    ", got " + shape_str(out.shape()));
  check_same_device(out, in, "lstm_swap_leading");
  TANDEM_CHECK(out.dtype() == in.dtype(), "lstm_swap_leading: dtypes differ");
  TANDEM_CHECK(!overlaps(out, in), "lstm_swap_leading: out overlaps in");
  const size_t elem = dtype_size(in.dtype());
  if (in.device().is_cpu()) {
    const char* src = static_cast<const char*>(in.data());
    char* dst = static_cast<char*>(out.data());
    for (int64_t a = 0; a < A; a++)
      for (int64_t b = 0; b < B; b++) std::memcpy(dst + (b * A + a) * C * elem, src + (a * B + b) * C * elem, C * elem);
    return;
  }
  TANDEM_CUDA_ONLY(cuda::lstm_swap_leading(out.data(), in.data(), A, B, C, elem, stream.cuda()));
}

}  // namespace tandem::kernels
