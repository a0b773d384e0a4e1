// ReLU and GELU (tanh form, as GPT-2), forward and backward.
// Backward overwrites the input gradient: dinp = dout * f'(inp). See Note
// [Gradient writes] in kernels/common.h.
#pragma once

#include "kernels/common.h"

namespace tandem::kernels {

namespace cpu {
void relu_forward(float* out, const float* inp, int64_t n);
void relu_backward(float* dinp, const float* inp, const float* dout, int64_t n);
void gelu_forward(float* out, const float* inp, int64_t n);
void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n);
}  // namespace cpu

namespace cuda {
void relu_forward(void* out, const void* inp, int64_t n, DType dtype, CUstream_st* stream);
void relu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dtype, CUstream_st* stream);
void gelu_forward(void* out, const void* inp, int64_t n, DType dtype, CUstream_st* stream);
void gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dtype, CUstream_st* stream);
}  // namespace cuda

enum class Activation { relu, gelu };

// out = f(inp), elementwise; out may alias inp.
inline void activation_forward(Activation act, const Tensor& out, const Tensor& inp, const Stream& stream) {
  check_same_float(out, inp, "activation_forward");
  check_numel(out, inp.numel(), "activation_forward");
  int64_t n = inp.numel();
  if (inp.device().is_cpu()) {
    auto fn = act == Activation::relu ? cpu::relu_forward : cpu::gelu_forward;
    fn(out.data_as<float>(), inp.data_as<float>(), n);
  } else {
    TANDEM_CUDA_ONLY((act == Activation::relu ? cuda::relu_forward : cuda::gelu_forward)(
        out.data(), inp.data(), n, inp.dtype(), stream.cuda()));
  }
}

// dinp = dout * f'(inp); dinp may alias dout.
inline void activation_backward(Activation act, const Tensor& dinp, const Tensor& inp, const Tensor& dout,
                                const Stream& stream) {
  check_same_float(dinp, inp, "activation_backward");
  check_same_float(dout, inp, "activation_backward");
  check_numel(dinp, inp.numel(), "activation_backward");
  check_numel(dout, inp.numel(), "activation_backward");
  int64_t n = inp.numel();
  if (inp.device().is_cpu()) {
    auto fn = act == Activation::relu ? cpu::relu_backward : cpu::gelu_backward;
    fn(dinp.data_as<float>(), inp.data_as<float>(), dout.data_as<float>(), n);
  } else {
    TANDEM_CUDA_ONLY((act == Activation::relu ? cuda::relu_backward : cuda::gelu_backward)(
        dinp.data(), inp.data(), dout.data(), n, inp.dtype(), stream.cuda()));
  }
}

}  // namespace tandem::kernels
