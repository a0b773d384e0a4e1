// 2-D convolution, PyTorch nn.Conv2d semantics: NCHW layout, groups = 1,
// zero padding, optional stride and dilation. Cross-correlation, as every
// framework computes it (the kernel is not flipped):
//
//   out[n,k,p,q] = bias[k] + sum over c, r, s of
//                  weight[k,c,r,s] * inp[n, c, p*stride_h - pad_h + r*dilation_h,
//                                           q*stride_w - pad_w + s*dilation_w]
//
// with inp read as zero outside (H, W). Shapes:
//   inp (N, C, H, W), weight (K, C, R, S), bias (K), out (N, K, P, Q)
//   P = (H + 2 pad_h - dilation_h (R - 1) - 1) / stride_h + 1, Q alike.
//
//   forward:          out      = conv(inp, weight) (+ bias)
//   backward_data:    dinp     = conv^T(dout, weight)           overwritten
//   backward_filter:  dweight += correlation of dout with inp
//                     dbias   += sums of dout over (N, P, Q)
// See Note [Gradient writes] in kernels/common.h.
//
// The CPU path (the fp32 reference) lowers each image to one GEMM through
// im2col: the (C*R*S, P*Q) matrix whose column (p, q) holds the input window
// under output pixel (p, q). The CUDA path (kernels/cuda/conv2d.cu) is
// cuDNN's convolution, f32, bf16 or f16 tensors with fp32 compute, one
// deterministic algorithm per direction chosen once per shape (Note [conv2d
// plans]); f32 runs without TF32, so it matches the CPU to fp32 rounding.
//
// Both need scratch, which the caller allocates once and passes to every
// call, because kernels never allocate: an f32 tensor of
// conv2d_workspace_elems(s, dtype, device) floats (the im2col matrix on the
// CPU; the largest workspace of the three cuDNN algorithms on CUDA, which
// that call chooses). cuDNN is loaded at run time: without it a CUDA call is
// a UserError saying what to install (Note [cuDNN is loaded lazily] in
// kernels/cuda/cudnn_library.h).
#pragma once

#include <algorithm>
#include <initializer_list>
#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

// The sizes of one convolution. Everything is zero-initialized (dilation 1),
// so a field left out fails check_conv2d_shape instead of reading garbage.
struct Conv2dShape {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input (N, C, H, W)
  int64_t K = 0;                        // output channels
  int64_t R = 0, S = 0;                 // kernel height, width
  int64_t stride_h = 0, stride_w = 0;   // >= 1
  int64_t pad_h = 0, pad_w = 0;         // zeros on each side, >= 0
  int64_t dilation_h = 1, dilation_w = 1;

  // Output height and width; 0 when the dilated kernel does not fit in the
  // padded input (or the stride is not positive), which the check rejects.
  int64_t P() const { return out_size(H, R, stride_h, pad_h, dilation_h); }
  int64_t Q() const { return out_size(W, S, stride_w, pad_w, dilation_w); }

  // "N=2 C=3 H=7 W=5 K=4 R=3 S=3 stride=(1,1) pad=(1,1) dilation=(1,1)", for messages.
  std::string str() const {
    // Appended piece by piece: GCC 12 warns (-Wrestrict, a false positive)
    // on "literal" + std::string temporaries.
    std::string out;
    auto field = [&](const char* name, int64_t v) { out.append(name).append(std::to_string(v)); };
    auto pair = [&](const char* name, int64_t a, int64_t b) {
      field(name, a);
      field(",", b);
      out.append(")");
    };
    field("N=", N), field(" C=", C), field(" H=", H), field(" W=", W), field(" K=", K), field(" R=", R);
    field(" S=", S);
    pair(" stride=(", stride_h, stride_w), pair(" pad=(", pad_h, pad_w), pair(" dilation=(", dilation_h, dilation_w);
    return out;
  }

 private:
  // Floor division, as PyTorch: a span that is negative (kernel larger than
  // the padded input) gives 0 here, where C++'s truncation would give 1.
  static int64_t out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
    int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1;
    return span < 0 || stride < 1 ? 0 : span / stride + 1;
  }
};

// Throws UserError, naming the shape, unless every size, stride and
// dilation is positive, the padding is not negative and the output is not
// empty (P, Q >= 1).
inline void check_conv2d_shape(const Conv2dShape& s) {
  auto fail = [&](const std::string& why) { throw UserError("conv2d: " + why + " (" + s.str() + ")"); };
  if (s.N < 1 || s.C < 1 || s.H < 1 || s.W < 1 || s.K < 1 || s.R < 1 || s.S < 1)
    fail("N, C, H, W, K, R and S must all be positive");
  if (s.stride_h < 1 || s.stride_w < 1) fail("strides must be positive");
  if (s.dilation_h < 1 || s.dilation_w < 1) fail("dilations must be positive");
  if (s.pad_h < 0 || s.pad_w < 0) fail("padding must not be negative");
  if (s.P() < 1 || s.Q() < 1)
    fail("empty output: the dilated kernel (" + std::to_string(s.dilation_h * (s.R - 1) + 1) + " x " +
         std::to_string(s.dilation_w * (s.S - 1) + 1) + ") does not fit in the padded input (" +
         std::to_string(s.H + 2 * s.pad_h) + " x " + std::to_string(s.W + 2 * s.pad_w) + ")");
}

// Floats of scratch every conv2d call needs on the CPU: the im2col matrix of
// one image, (C*R*S, P*Q). The same workspace serves all three calls.
inline int64_t conv2d_workspace_elems(const Conv2dShape& s) { return s.C * s.R * s.S * s.P() * s.Q(); }

// Multiply-adds of the forward, times two (each backward costs as much
// again, without the bias).
inline double conv2d_flops(const Conv2dShape& s) {
  return 2.0 * static_cast<double>(s.N) * static_cast<double>(s.K) * static_cast<double>(s.P() * s.Q()) *
         static_cast<double>(s.C * s.R * s.S);
}

namespace cpu {
// bias and dbias: null to skip. workspace: conv2d_workspace_elems(s) floats.
void conv2d_forward(float* out, const float* inp, const float* weight, const float* bias,  // (N,K,P,Q) = ...
                    const Conv2dShape& s, float* workspace);
void conv2d_backward_data(float* dinp, const float* dout, const float* weight,  // (N,C,H,W) =, (N,K,P,Q), (K,C,R,S)
                          const Conv2dShape& s, float* workspace);
void conv2d_backward_filter(float* dweight, float* dbias,          // (K,C,R,S) +=, (K) +=
                            const float* dout, const float* inp,   // (N,K,P,Q), (N,C,H,W)
                            const Conv2dShape& s, float* workspace);
}  // namespace cpu

namespace cuda {
// Every pointer on CUDA device `device`, of `dtype` (f32, bf16 or f16);
// bias and dbias: null to skip. workspace: conv2d_workspace_bytes(s, dtype,
// device) bytes, which picks the plan (Note [conv2d plans]) on first use.
int64_t conv2d_workspace_bytes(const Conv2dShape& s, DType dtype, int device);
void conv2d_forward(void* out, const void* inp, const void* weight, const void* bias, const Conv2dShape& s,
                    DType dtype, void* workspace, int device, CUstream_st* stream);
void conv2d_backward_data(void* dinp, const void* dout, const void* weight, const Conv2dShape& s, DType dtype,
                          void* workspace, int device, CUstream_st* stream);
void conv2d_backward_filter(void* dweight, void* dbias, const void* dout, const void* inp, const Conv2dShape& s,
                            DType dtype, void* workspace, int device, CUstream_st* stream);
}  // namespace cuda

// Floats of workspace (an f32 tensor) that conv2d calls over tensors of
// `dtype` on `device` need: conv2d_workspace_elems(s) on the CPU, whatever
// the dtype (the CPU takes f32 only, and its check says so); on CUDA the
// largest cuDNN workspace of the three directions, rounded up to floats (at
// least one, so the tensor is never empty: scratch_floats).
inline int64_t conv2d_workspace_elems(const Conv2dShape& s, DType dtype, Device device) {
  if (device.is_cpu()) return conv2d_workspace_elems(s);
  check_conv2d_shape(s);
  int64_t bytes = 0;
  TANDEM_CUDA_ONLY(bytes = cuda::conv2d_workspace_bytes(s, dtype, device.index));
  return scratch_floats(bytes);
}

namespace conv2d_detail {
// The shape, then every tensor and the workspace (kernels/common.h), whose
// size depends on the device and dtype. Returns true for the CUDA path.
inline bool check_call(const Conv2dShape& s, std::initializer_list<TensorArg> tensors, const Tensor& workspace,
                       const char* op) {
  check_conv2d_shape(s);
  const DType dtype = check_kernel_tensors(op, "conv2d", s.str(), tensors);
  const Device device = tensors.begin()->t->device();
  check_scratch(op, tensors,
                {{&workspace, "workspace", conv2d_workspace_elems(s, dtype, device), "conv2d_workspace_elems"}});
  return device.is_cuda();
}

inline void* or_null(const Tensor& t) { return t.defined() ? t.data() : nullptr; }
}  // namespace conv2d_detail

// out = conv(inp, weight) + bias; an undefined bias adds nothing. out must
// not overlap any input or the workspace.
inline void conv2d_forward(const Tensor& out /* (N, K, P, Q) */, const Tensor& inp /* (N, C, H, W) */,
                           const Tensor& weight /* (K, C, R, S) */, const Tensor& bias /* (K) or undefined */,
                           const Conv2dShape& s, const Tensor& workspace /* conv2d_workspace_elems(s, ...) */,
                           const Stream& stream) {
  const bool on_cuda = conv2d_detail::check_call(s,
                                                 {{&out, {s.N, s.K, s.P(), s.Q()}, "out", ArgKind::output},
                                                  {&inp, {s.N, s.C, s.H, s.W}, "inp", ArgKind::input},
                                                  {&weight, {s.K, s.C, s.R, s.S}, "weight", ArgKind::input},
                                                  {&bias, {s.K}, "bias", ArgKind::optional_input}},
                                                 workspace, "conv2d_forward");
  if (on_cuda) {
    TANDEM_CUDA_ONLY(cuda::conv2d_forward(out.data(), inp.data(), weight.data(), conv2d_detail::or_null(bias), s,
                                          inp.dtype(), workspace.data(), inp.device().index, stream.cuda()));
    return;
  }
  cpu::conv2d_forward(out.data_as<float>(), inp.data_as<float>(), weight.data_as<float>(),
                      bias.defined() ? bias.data_as<float>() : nullptr, s, workspace.data_as<float>());
}

// dinp = the gradient of out with respect to inp, applied to dout
// (overwritten, whatever it held). dinp must not overlap dout, weight or the
// workspace.
inline void conv2d_backward_data(const Tensor& dinp /* (N, C, H, W) */, const Tensor& dout /* (N, K, P, Q) */,
                                 const Tensor& weight /* (K, C, R, S) */, const Conv2dShape& s,
                                 const Tensor& workspace /* conv2d_workspace_elems(s, ...) */,
                                 const Stream& stream) {
  const bool on_cuda = conv2d_detail::check_call(s,
                                                 {{&dinp, {s.N, s.C, s.H, s.W}, "dinp", ArgKind::output},
                                                  {&dout, {s.N, s.K, s.P(), s.Q()}, "dout", ArgKind::input},
                                                  {&weight, {s.K, s.C, s.R, s.S}, "weight", ArgKind::input}},
                                                 workspace, "conv2d_backward_data");
  if (on_cuda) {
    TANDEM_CUDA_ONLY(cuda::conv2d_backward_data(dinp.data(), dout.data(), weight.data(), s, dout.dtype(),
                                                workspace.data(), dout.device().index, stream.cuda()));
    return;
  }
  cpu::conv2d_backward_data(dinp.data_as<float>(), dout.data_as<float>(), weight.data_as<float>(), s,
                            workspace.data_as<float>());
}

// dweight += the gradient of out with respect to weight, applied to dout;
// dbias += dout summed over (N, P, Q), skipped when dbias is undefined.
// dweight and dbias must not overlap anything else.
inline void conv2d_backward_filter(const Tensor& dweight /* (K, C, R, S) */, const Tensor& dbias /* (K) or undefined */,
                                   const Tensor& dout /* (N, K, P, Q) */, const Tensor& inp /* (N, C, H, W) */,
                                   const Conv2dShape& s,
                                   const Tensor& workspace /* conv2d_workspace_elems(s, ...) */,
                                   const Stream& stream) {
  const bool on_cuda = conv2d_detail::check_call(s,
                                                 {{&dweight, {s.K, s.C, s.R, s.S}, "dweight", ArgKind::output},
                                                  {&dbias, {s.K}, "dbias", ArgKind::optional_output},
                                                  {&dout, {s.N, s.K, s.P(), s.Q()}, "dout", ArgKind::input},
                                                  {&inp, {s.N, s.C, s.H, s.W}, "inp", ArgKind::input}},
                                                 workspace, "conv2d_backward_filter");
  if (on_cuda) {
    TANDEM_CUDA_ONLY(cuda::conv2d_backward_filter(dweight.data(), conv2d_detail::or_null(dbias), dout.data(),
                                                  inp.data(), s, dout.dtype(), workspace.data(),
                                                  dout.device().index, stream.cuda()));
    return;
  }
  cpu::conv2d_backward_filter(dweight.data_as<float>(), dbias.defined() ? dbias.data_as<float>() : nullptr,
                              dout.data_as<float>(), inp.data_as<float>(), s, workspace.data_as<float>());
}

}  // namespace tandem::kernels
