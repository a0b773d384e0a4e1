// Matrix multiply of a Linear layer (PyTorch layout): out = inp @ weight^T,
// optionally + bias and then GELU (tanh form, as kernels/activation.h).
//
//   forward:  out      = inp @ weight^T (+ bias) (then GELU)   (N, OC)
//   backward: dinp     = dout @ weight                          (N, C), overwritten
//             dweight += dout^T @ inp                           (OC, C)
//             dbias   += column sums of dout                    (OC)
// See Note [Gradient writes] in kernels/common.h. Backward takes dout with
// respect to the GELU's *input* when the forward used Epilogue::gelu_bias:
// run activation_backward(gelu, .., pre_gelu, ..) first.
//
// Leading dimensions are flattened: inp may be (B, T, C), out (B, T, OC).
// The CPU path is one OpenBLAS sgemm (fp32) plus plain loops; the CUDA path
// is cuBLASLt with fp32 accumulation (no TF32) and the bias/GELU fused into
// the GEMM's epilogue where cuBLASLt can, separate kernels where not.
#pragma once

#include "kernels/bias.h"
#include "kernels/common.h"

namespace tandem::kernels {

enum class Epilogue {
  none,       // out = inp @ weight^T
  bias,       // out = inp @ weight^T + bias
  gelu_bias,  // pre_gelu = inp @ weight^T + bias; out = gelu(pre_gelu)
};

struct MatmulOptions {
  Tensor bias = {};  // (OC); required by Epilogue::bias and gelu_bias, undefined for none
  Epilogue epilogue = Epilogue::none;
  Tensor pre_gelu = {};  // (N, OC); gelu_bias only: receives the GELU's input, for backward
};

namespace cpu {
// bias: null for Epilogue::none; pre_gelu: null unless Epilogue::gelu_bias.
void matmul_forward(float* out, float* pre_gelu, const float* inp, const float* weight, const float* bias,
                    Epilogue epilogue, int64_t N, int64_t C, int64_t OC);
// dinp, dweight, dbias: each null to skip it.
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC);
}  // namespace cpu

namespace cuda {
// `device` is the CUDA device of every pointer (it picks the cuBLASLt handle
// and workspace; see Note [cuBLASLt setup] in kernels/cuda/matmul.cu).
void matmul_forward(void* out, void* pre_gelu, const void* inp, const void* weight, const void* bias,
                    Epilogue epilogue, int64_t N, int64_t C, int64_t OC, DType dtype, int device,
                    CUstream_st* stream);
void matmul_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                     const void* weight, int64_t N, int64_t C, int64_t OC, DType dtype, int device,
                     CUstream_st* stream);
}  // namespace cuda

// Multiply-adds of one forward GEMM, times two: its FLOP count (backward is
// twice that, with dweight).
inline double matmul_flops(int64_t N, int64_t C, int64_t OC) {
  return 2.0 * static_cast<double>(N) * static_cast<double>(C) * static_cast<double>(OC);
}

// out = inp @ weight^T, then the epilogue in opts. out must not alias inp,
// weight or pre_gelu.
inline void matmul_forward(const Tensor& out /* (N, OC) */, const Tensor& inp /* (N, C) */,
                           const Tensor& weight /* (OC, C) */, const MatmulOptions& opts,
                           const Stream& stream) {
  const char* op = "matmul_forward";
  check_same_float(inp, weight, op);
  check_same_float(out, inp, op);
  TANDEM_CHECK(weight.ndim() == 2, std::string(op) + ": weight must be (OC, C), got " + shape_str(weight.shape()));
  int64_t OC = weight.dim(0), C = weight.dim(1);
  check_last_dim(inp, C, op);
  check_last_dim(out, OC, op);
  int64_t N = rows_of(inp, op);
  check_numel(out, N * OC, op);
  TANDEM_CHECK(out.data() != inp.data() && out.data() != weight.data(), std::string(op) + ": out aliases an input");

  bool wants_bias = opts.epilogue != Epilogue::none;
  TANDEM_CHECK(opts.bias.defined() == wants_bias,
               std::string(op) + (wants_bias ? ": this epilogue needs opts.bias"
                                             : ": opts.bias given, but the epilogue is none"));
  if (wants_bias) {
    check_same_float(opts.bias, inp, op);
    check_numel(opts.bias, OC, op);
  }
  bool wants_gelu = opts.epilogue == Epilogue::gelu_bias;
  TANDEM_CHECK(opts.pre_gelu.defined() == wants_gelu,
               std::string(op) + (wants_gelu ? ": Epilogue::gelu_bias needs opts.pre_gelu"
                                             : ": opts.pre_gelu given without Epilogue::gelu_bias"));
  if (wants_gelu) {
    check_same_float(opts.pre_gelu, inp, op);
    check_numel(opts.pre_gelu, N * OC, op);
    TANDEM_CHECK(opts.pre_gelu.data() != out.data(), std::string(op) + ": pre_gelu aliases out");
  }

  const Tensor& bias = opts.bias;
  const Tensor& pre_gelu = opts.pre_gelu;
  if (inp.device().is_cpu()) {
    cpu::matmul_forward(out.data_as<float>(), wants_gelu ? pre_gelu.data_as<float>() : nullptr,
                        inp.data_as<float>(), weight.data_as<float>(), wants_bias ? bias.data_as<float>() : nullptr,
                        opts.epilogue, N, C, OC);
  } else {
    TANDEM_CUDA_ONLY(cuda::matmul_forward(out.data(), wants_gelu ? pre_gelu.data() : nullptr, inp.data(),
                                          weight.data(), wants_bias ? bias.data() : nullptr, opts.epilogue, N, C,
                                          OC, inp.dtype(), inp.device().index, stream.cuda()));
  }
}

// dinp = dout @ weight; dweight += dout^T @ inp; dbias += column sums of
// dout. An undefined dinp, dweight or dbias is skipped.
inline void matmul_backward(const Tensor& dinp /* (N, C) */, const Tensor& dweight /* (OC, C) */,
                            const Tensor& dbias /* (OC) */, const Tensor& dout /* (N, OC) */,
                            const Tensor& inp /* (N, C) */, const Tensor& weight /* (OC, C) */,
                            const Stream& stream) {
  const char* op = "matmul_backward";
  check_same_float(inp, weight, op);
  check_same_float(dout, inp, op);
  TANDEM_CHECK(weight.ndim() == 2, std::string(op) + ": weight must be (OC, C), got " + shape_str(weight.shape()));
  int64_t OC = weight.dim(0), C = weight.dim(1);
  check_last_dim(inp, C, op);
  check_last_dim(dout, OC, op);
  int64_t N = rows_of(inp, op);
  check_numel(dout, N * OC, op);
  if (dinp.defined()) {
    check_same_float(dinp, inp, op);
    check_numel(dinp, N * C, op);
    TANDEM_CHECK(dinp.data() != dout.data() && dinp.data() != weight.data(),
                 std::string(op) + ": dinp aliases an input");
  }
  if (dweight.defined()) {
    check_same_float(dweight, inp, op);
    check_numel(dweight, OC * C, op);
  }
  if (dbias.defined()) {
    check_same_float(dbias, inp, op);
    check_numel(dbias, OC, op);
  }

  if (inp.device().is_cpu()) {
    cpu::matmul_backward(dinp.defined() ? dinp.data_as<float>() : nullptr,
                         dweight.defined() ? dweight.data_as<float>() : nullptr,
                         dbias.defined() ? dbias.data_as<float>() : nullptr, dout.data_as<float>(),
                         inp.data_as<float>(), weight.data_as<float>(), N, C, OC);
  } else {
    TANDEM_CUDA_ONLY(cuda::matmul_backward(dinp.defined() ? dinp.data() : nullptr,
                                           dweight.defined() ? dweight.data() : nullptr,
                                           dbias.defined() ? dbias.data() : nullptr, dout.data(), inp.data(),
                                           weight.data(), N, C, OC, inp.dtype(), inp.device().index,
                                           stream.cuda()));
  }
}

}  // namespace tandem::kernels
