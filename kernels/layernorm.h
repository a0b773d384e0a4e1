// LayerNorm over the last dimension (as GPT-2), forward and backward.
//
//   out = (inp - mean) * rstd * weight + bias,   rstd = 1 / sqrt(var + eps)
//
// with mean and the biased variance taken over the C channels of each row.
// The forward saves mean and rstd (f32, one per row) for the backward, which
// overwrites dinp and accumulates dweight and dbias (Note [Gradient writes]
// in kernels/common.h).
//
// The CUDA backward is deterministic, bitwise run to run: dweight/dbias are
// reduced over rows in a fixed order by a column kernel that owns its
// columns outright (no atomics, no workspace); see kernels/cuda/layernorm.cu.
//
// residual_layernorm_forward fuses GPT-2's "x = x + attn(ln1(x)); h = ln2(x)":
// residual = a + b, then out = layernorm(residual), in one pass over the rows.
// It is the unfused pair, residual_add (kernels/residual.h) then
// layernorm_forward, bit for bit on the same device: the sum is rounded to
// the storage dtype exactly as residual_add rounds it, and the normalization
// reads that stored (in bf16, rounded) residual through the same per-row
// code as layernorm_forward. Its backward is layernorm_backward on the saved
// residual, mean and rstd, with dinp added into the residual stream's
// gradient; no fused backward is needed.
#pragma once

#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

namespace cpu {
void layernorm_forward(float* out, float* mean, float* rstd,             // (N, C), (N), (N)
                       const float* inp, const float* weight, const float* bias,  // (N, C), (C), (C)
                       int64_t N, int64_t C, float eps);
void layernorm_backward(float* dinp, float* dweight, float* dbias,       // (N, C) =, (C) +=, (C) +=
                        const float* dout, const float* inp, const float* weight,  // (N, C), (N, C), (C)
                        const float* mean, const float* rstd,            // (N), (N)
                        int64_t N, int64_t C);
void residual_layernorm_forward(float* residual, float* out, float* mean, float* rstd,  // (N, C), (N, C), (N), (N)
                                const float* a, const float* b,                   // (N, C), (N, C)
                                const float* weight, const float* bias,           // (C), (C)
                                int64_t N, int64_t C, float eps);
}  // namespace cpu

namespace cuda {
// out, inp, weight, bias, dinp, dweight, dbias, dout: `dtype` (f32 or bf16);
// mean and rstd: always f32.
void layernorm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight,
                       const void* bias, int64_t N, int64_t C, float eps, DType dtype, CUstream_st* stream);
void layernorm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                        const void* weight, const float* mean, const float* rstd, int64_t N, int64_t C,
                        DType dtype, CUstream_st* stream);
void residual_layernorm_forward(void* residual, void* out, float* mean, float* rstd, const void* a, const void* b,
                                const void* weight, const void* bias, int64_t N, int64_t C, float eps, DType dtype,
                                CUstream_st* stream);
}  // namespace cuda

struct LayerNormOptions {
  float eps = 1e-5f;  // added to the variance before the square root (GPT-2's value)
};

namespace layernorm_detail {
// Rows and channels of an activation (..., C): C is the last dimension.
inline void rows_and_channels(const Tensor& inp, int64_t* N, int64_t* C, const char* op) {
  TANDEM_CHECK(inp.ndim() >= 1 && inp.dim(-1) >= 1,
               std::string(op) + ": expected (..., C) with C >= 1, got " + shape_str(inp.shape()));
  *C = inp.dim(-1);
  *N = inp.numel() / *C;
}

// mean and rstd: f32, one value per row, on the activations' device.
inline void check_stats(const Tensor& stat, const Tensor& like, int64_t N, const char* op) {
  TANDEM_CHECK(stat.defined() && stat.dtype() == DType::f32,
               std::string(op) + ": mean and rstd must be defined f32 tensors");
  check_same_device(stat, like, op);
  check_numel(stat, N, op);
}

}  // namespace layernorm_detail

// out = layernorm(inp) * weight + bias; also writes mean and rstd for the
// backward. inp and out are (..., C) with the same element count; weight and
// bias are (C) of inp's dtype. out must not alias inp (the backward needs inp).
inline void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& inp,
                              const Tensor& weight, const Tensor& bias, const LayerNormOptions& options,
                              const Stream& stream) {
  const char* op = "layernorm_forward";
  int64_t N, C;
  layernorm_detail::rows_and_channels(inp, &N, &C, op);
  check_same_float(out, inp, op);
  check_same_float(weight, inp, op);
  check_same_float(bias, inp, op);
  check_numel(out, N * C, op);
  check_numel(weight, C, op);
  check_numel(bias, C, op);
  layernorm_detail::check_stats(mean, inp, N, op);
  layernorm_detail::check_stats(rstd, inp, N, op);
  if (inp.device().is_cpu()) {
    cpu::layernorm_forward(out.data_as<float>(), mean.data_as<float>(), rstd.data_as<float>(),
                           inp.data_as<float>(), weight.data_as<float>(), bias.data_as<float>(), N, C,
                           options.eps);
  } else {
    TANDEM_CUDA_ONLY(cuda::layernorm_forward(out.data(), mean.data_as<float>(), rstd.data_as<float>(),
                                             inp.data(), weight.data(), bias.data(), N, C, options.eps,
                                             inp.dtype(), stream.cuda()));
  }
}

// residual = a + b, then out = layernorm(residual) * weight + bias, with mean
// and rstd as layernorm_forward saves them (the backward takes residual as
// its inp). a, b, residual and out are (..., C) with the same element count;
// weight and bias are (C). residual may alias a or b (x += ... in place into
// the residual stream), element for element; out must not overlap residual,
// a or b.
inline void residual_layernorm_forward(const Tensor& residual, const Tensor& out, const Tensor& mean,
                                       const Tensor& rstd, const Tensor& a, const Tensor& b, const Tensor& weight,
                                       const Tensor& bias, const LayerNormOptions& options, const Stream& stream) {
  const char* op = "residual_layernorm_forward";
  int64_t N, C;
  layernorm_detail::rows_and_channels(a, &N, &C, op);
  check_same_float(residual, a, op);
  check_same_float(b, a, op);
  check_same_float(out, a, op);
  check_same_float(weight, a, op);
  check_same_float(bias, a, op);
  check_numel(residual, N * C, op);
  check_numel(b, N * C, op);
  check_numel(out, N * C, op);
  check_numel(weight, C, op);
  check_numel(bias, C, op);
  layernorm_detail::check_stats(mean, a, N, op);
  layernorm_detail::check_stats(rstd, a, N, op);
  TANDEM_CHECK(!overlaps(out, residual) && !overlaps(out, a) && !overlaps(out, b),
               std::string(op) + ": out overlaps residual, a or b");
  for (const Tensor* in : {&a, &b})
    TANDEM_CHECK(residual.data() == in->data() || !overlaps(residual, *in),
                 std::string(op) + ": residual overlaps a or b without being the same elements");
  if (a.device().is_cpu()) {
    cpu::residual_layernorm_forward(residual.data_as<float>(), out.data_as<float>(), mean.data_as<float>(),
                                    rstd.data_as<float>(), a.data_as<float>(), b.data_as<float>(),
                                    weight.data_as<float>(), bias.data_as<float>(), N, C, options.eps);
  } else {
    TANDEM_CUDA_ONLY(cuda::residual_layernorm_forward(residual.data(), out.data(), mean.data_as<float>(),
                                                      rstd.data_as<float>(), a.data(), b.data(), weight.data(),
                                                      bias.data(), N, C, options.eps, a.dtype(), stream.cuda()));
  }
}

// dinp = d(out)/d(inp) . dout (overwritten); dweight += sum over rows of
// dout * normalized inp; dbias += sum over rows of dout. mean and rstd are the
// forward's. dinp may alias dout; it must not alias anything else.
inline void layernorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                               const Tensor& inp, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                               const Stream& stream) {
  const char* op = "layernorm_backward";
  int64_t N, C;
  layernorm_detail::rows_and_channels(inp, &N, &C, op);
  check_same_float(dinp, inp, op);
  check_same_float(dout, inp, op);
  check_same_float(weight, inp, op);
  check_same_float(dweight, inp, op);
  check_same_float(dbias, inp, op);
  check_numel(dinp, N * C, op);
  check_numel(dout, N * C, op);
  check_numel(weight, C, op);
  check_numel(dweight, C, op);
  check_numel(dbias, C, op);
  layernorm_detail::check_stats(mean, inp, N, op);
  layernorm_detail::check_stats(rstd, inp, N, op);
  if (inp.device().is_cpu()) {
    cpu::layernorm_backward(dinp.data_as<float>(), dweight.data_as<float>(), dbias.data_as<float>(),
                            dout.data_as<float>(), inp.data_as<float>(), weight.data_as<float>(),
                            mean.data_as<float>(), rstd.data_as<float>(), N, C);
  } else {
    TANDEM_CUDA_ONLY(cuda::layernorm_backward(dinp.data(), dweight.data(), dbias.data(), dout.data(),
                                              inp.data(), weight.data(), mean.data_as<float>(),
                                              rstd.data_as<float>(), N, C, inp.dtype(), stream.cuda()));
  }
}

}  // namespace tandem::kernels
