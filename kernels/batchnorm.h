// BatchNorm over (N, C, *) activations, as PyTorch's nn.BatchNorm2d (and
// nn.BatchNorm1d on (N, C) or (N, C, L)): each channel c is normalized over
// its n = N * H * W values (H * W: the product of the dimensions after C,
// 1 for a 2-D input),
//
//   out = (inp - mean_c) * rstd_c * weight[c] + bias[c],   rstd_c = 1 / sqrt(var_c + eps)
//
// Semantic choices (all PyTorch's, except where marked):
// - Training normalizes with the BIASED batch variance (sum of squares / n)
//   and saves mean_c and rstd_c (f32, one per channel) for the backward, as
//   PyTorch's save_mean and save_invstd.
// - Training updates the running statistics in place with the UNBIASED batch
//   variance (sum of squares / (n - 1)):
//     running_mean = (1 - momentum) * running_mean + momentum * mean_c
//     running_var  = (1 - momentum) * running_var  + momentum * var_c * n / (n - 1)
//   momentum is a fixed factor; PyTorch's momentum=None (a cumulative
//   average) is not offered.
// - n = 1 (not PyTorch: nn.BatchNorm refuses to train on one value per
//   channel, and its kernels would store NaN): the output is bias (the value
//   is its own mean), the backward gives dinp = 0, running_mean is updated as
//   usual and running_var is LEFT UNCHANGED, since one value says nothing
//   about the spread (decaying it towards 0 would blow up eval outputs).
// - n = 0 (an empty batch): nothing is normalized and the running statistics
//   are left unchanged; save_mean = 0 and save_rstd = 1 / sqrt(eps).
// - Eval normalizes with the running statistics and changes nothing.
// - weight and bias are required (PyTorch's affine=True), and so are the
//   running statistics (track_running_stats=True).
// - Statistics are accumulated in fp64 on both devices (kernels/cpu/batchnorm.cpp,
//   Note [BatchNorm sums] in kernels/cuda/batchnorm.cu).
//
// The backward overwrites dinp and accumulates dweight and dbias (Note
// [Gradient writes] in kernels/common.h).
//
// Dtypes: activations (inp, out, dinp, dout) f32, or bf16 on CUDA. weight,
// bias, dweight and dbias f32, or the activations' dtype (a bf16 model's
// ParameterSet holds them in bf16). The statistics (save_mean, save_rstd,
// running_mean, running_var) are f32 whatever the activations are. Math is
// fp32 per value, fp64 in the per-channel sums.
//
// CUDA (our own kernels, not cuDNN: cuDNN has no n = 1 / n = 0 rules above)
// is deterministic: no atomics, the same bits run to run; see
// kernels/cuda/batchnorm.cu.
#pragma once

#include <initializer_list>
#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

struct BatchNormOptions {
  float eps = 1e-5f;      // added to the variance before the square root (PyTorch's default)
  float momentum = 0.1f;  // weight of the batch statistics in the running update (PyTorch's default)
};

namespace cpu {
// HW: the values of one channel in one sample (H * W; 1 for a 2-D input).
void batchnorm_forward_train(float* out, float* save_mean, float* save_rstd,       // (N, C, HW), (C), (C)
                             float* running_mean, float* running_var,              // (C) updated, (C) updated
                             const float* inp, const float* weight, const float* bias,  // (N, C, HW), (C), (C)
                             int64_t N, int64_t C, int64_t HW, const BatchNormOptions& options);
void batchnorm_forward_eval(float* out, const float* inp,                           // (N, C, HW), (N, C, HW)
                            const float* weight, const float* bias,                 // (C), (C)
                            const float* running_mean, const float* running_var,    // (C), (C)
                            int64_t N, int64_t C, int64_t HW, const BatchNormOptions& options);
void batchnorm_backward(float* dinp, float* dweight, float* dbias,                  // (N, C, HW) =, (C) +=, (C) +=
                        const float* dout, const float* inp, const float* weight,   // (N, C, HW), (N, C, HW), (C)
                        const float* save_mean, const float* save_rstd,             // (C), (C)
                        int64_t N, int64_t C, int64_t HW);
}  // namespace cpu

namespace cuda {
// Activations: `dtype` (f32 or bf16); weight, bias, dweight, dbias:
// `param_dtype` (f32, or `dtype`); statistics f32. Same shapes as cpu::.
void batchnorm_forward_train(void* out, float* save_mean, float* save_rstd, float* running_mean,
                             float* running_var, const void* inp, const void* weight, const void* bias,
                             int64_t N, int64_t C, int64_t HW, const BatchNormOptions& options, DType dtype,
                             DType param_dtype, CUstream_st* stream);
void batchnorm_forward_eval(void* out, const void* inp, const void* weight, const void* bias,
                            const float* running_mean, const float* running_var, int64_t N, int64_t C, int64_t HW,
                            const BatchNormOptions& options, DType dtype, DType param_dtype, CUstream_st* stream);
void batchnorm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                        const void* weight, const float* save_mean, const float* save_rstd, int64_t N, int64_t C,
                        int64_t HW, DType dtype, DType param_dtype, CUstream_st* stream);
}  // namespace cuda

namespace batchnorm_detail {

// The activation that decides the device: defined, f32 (or bf16 on CUDA),
// at least (N, C). Sets N, C and HW (the product of the dimensions after C).
inline void check_activation(const Tensor& inp, int64_t* N, int64_t* C, int64_t* HW, const char* op) {
  TANDEM_CHECK(inp.defined(), std::string(op) + ": undefined input");
  check_float(inp, op);
  TANDEM_CHECK(inp.ndim() >= 2, std::string(op) + ": expected (N, C), (N, C, L) or (N, C, H, W), got " +
                                    shape_str(inp.shape()));
  *N = inp.dim(0);
  *C = inp.dim(1);
  *HW = 1;
  for (int i = 2; i < inp.ndim(); i++) *HW *= inp.dim(i);
}

// Another activation-sized tensor: the same shape as inp, exactly.
inline void check_like(const Tensor& t, const Tensor& inp, const char* what, const char* op) {
  TANDEM_CHECK(t.defined(), std::string(op) + ": undefined " + what);
  check_same_float(t, inp, op);
  TANDEM_CHECK(t.shape() == inp.shape(), std::string(op) + ": " + what + " is " + shape_str(t.shape()) +
                                             ", expected " + shape_str(inp.shape()) + " as the input");
}

// C values per channel on inp's device.
inline void check_channel_count(const Tensor& t, int64_t C, const char* what, const char* op) {
  TANDEM_CHECK(t.numel() == C, std::string(op) + ": " + what + " has " + std::to_string(t.numel()) +
                                   " elements (" + shape_str(t.shape()) + "), expected C = " + std::to_string(C));
}

// A statistic (save_mean, save_rstd, running_mean, running_var): f32 whatever
// inp's dtype.
inline void check_stat(const Tensor& t, const Tensor& inp, int64_t C, const char* what, const char* op) {
  TANDEM_CHECK(t.defined(), std::string(op) + ": undefined " + what);
  check_same_device(t, inp, op);
  TANDEM_CHECK(t.dtype() == DType::f32, std::string(op) + ": " + what + " must be f32, got " + dtype_name(t.dtype()));
  check_channel_count(t, C, what, op);
}

// A parameter or its gradient (weight, bias, dweight, dbias): f32 or inp's dtype.
inline void check_param(const Tensor& t, const Tensor& inp, int64_t C, const char* what, const char* op) {
  TANDEM_CHECK(t.defined(), std::string(op) + ": undefined " + what);
  check_same_device(t, inp, op);
  TANDEM_CHECK(t.dtype() == DType::f32 || t.dtype() == inp.dtype(),
               std::string(op) + ": " + what + " must be f32 or the input's " + dtype_name(inp.dtype()) + ", got " +
                   dtype_name(t.dtype()));
  check_channel_count(t, C, what, op);
}

// weight, bias and their gradients share one dtype (one kernel instance each).
inline void check_same_params(std::initializer_list<const Tensor*> params, const char* op) {
  DType first = (*params.begin())->dtype();
  for (const Tensor* t : params)
    TANDEM_CHECK(t->dtype() == first, std::string(op) + ": weight, bias and their gradients must share one dtype, got " +
                                          dtype_name(first) + " and " + dtype_name(t->dtype()));
}

inline void check_options(const BatchNormOptions& o, const char* op) {
  TANDEM_CHECK(o.eps > 0, std::string(op) + ": eps must be > 0, got " + std::to_string(o.eps));
  TANDEM_CHECK(o.momentum >= 0 && o.momentum <= 1,
               std::string(op) + ": momentum must be in [0, 1], got " + std::to_string(o.momentum));
}

}  // namespace batchnorm_detail

// Training: out = batchnorm(inp) * weight + bias with the batch statistics;
// writes save_mean and save_rstd for the backward and updates running_mean
// and running_var in place (see the top of this file). inp and out are
// (N, C, *) of one shape; weight, bias, save_mean, save_rstd, running_mean
// and running_var hold C values (dtypes at the top of this file). out must
// not overlap inp (the backward needs inp).
inline void batchnorm_forward_train(const Tensor& out, const Tensor& save_mean, const Tensor& save_rstd,
                                    const Tensor& running_mean, const Tensor& running_var, const Tensor& inp,
                                    const Tensor& weight, const Tensor& bias, const BatchNormOptions& options,
                                    const Stream& stream) {
  const char* op = "batchnorm_forward_train";
  int64_t N, C, HW;
  batchnorm_detail::check_activation(inp, &N, &C, &HW, op);
  batchnorm_detail::check_like(out, inp, "out", op);
  batchnorm_detail::check_stat(save_mean, inp, C, "save_mean", op);
  batchnorm_detail::check_stat(save_rstd, inp, C, "save_rstd", op);
  batchnorm_detail::check_stat(running_mean, inp, C, "running_mean", op);
  batchnorm_detail::check_stat(running_var, inp, C, "running_var", op);
  batchnorm_detail::check_param(weight, inp, C, "weight", op);
  batchnorm_detail::check_param(bias, inp, C, "bias", op);
  batchnorm_detail::check_same_params({&weight, &bias}, op);
  batchnorm_detail::check_options(options, op);
  TANDEM_CHECK(!overlaps(out, inp), std::string(op) + ": out overlaps inp");
  if (inp.device().is_cpu()) {
    cpu::batchnorm_forward_train(out.data_as<float>(), save_mean.data_as<float>(), save_rstd.data_as<float>(),
                                 running_mean.data_as<float>(), running_var.data_as<float>(), inp.data_as<float>(),
                                 weight.data_as<float>(), bias.data_as<float>(), N, C, HW, options);
  } else {
    TANDEM_CUDA_ONLY(cuda::batchnorm_forward_train(
        out.data(), save_mean.data_as<float>(), save_rstd.data_as<float>(), running_mean.data_as<float>(),
        running_var.data_as<float>(), inp.data(), weight.data(), bias.data(), N, C, HW, options, inp.dtype(),
        weight.dtype(), stream.cuda()));
  }
}

// Eval: out = (inp - running_mean) / sqrt(running_var + eps) * weight + bias;
// nothing else changes (options.momentum is not used). Shapes as in
// training. out may alias inp, element for element (in place).
inline void batchnorm_forward_eval(const Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor& bias,
                                   const Tensor& running_mean, const Tensor& running_var,
                                   const BatchNormOptions& options, const Stream& stream) {
  const char* op = "batchnorm_forward_eval";
  int64_t N, C, HW;
  batchnorm_detail::check_activation(inp, &N, &C, &HW, op);
  batchnorm_detail::check_like(out, inp, "out", op);
  batchnorm_detail::check_param(weight, inp, C, "weight", op);
  batchnorm_detail::check_param(bias, inp, C, "bias", op);
  batchnorm_detail::check_same_params({&weight, &bias}, op);
  batchnorm_detail::check_stat(running_mean, inp, C, "running_mean", op);
  batchnorm_detail::check_stat(running_var, inp, C, "running_var", op);
  batchnorm_detail::check_options(options, op);
  TANDEM_CHECK(out.data() == inp.data() || !overlaps(out, inp),
               std::string(op) + ": out overlaps inp without being the same elements");
  if (inp.device().is_cpu()) {
    cpu::batchnorm_forward_eval(out.data_as<float>(), inp.data_as<float>(), weight.data_as<float>(),
                                bias.data_as<float>(), running_mean.data_as<float>(), running_var.data_as<float>(),
                                N, C, HW, options);
  } else {
    TANDEM_CUDA_ONLY(cuda::batchnorm_forward_eval(out.data(), inp.data(), weight.data(), bias.data(),
                                                  running_mean.data_as<float>(), running_var.data_as<float>(), N,
                                                  C, HW, options, inp.dtype(), weight.dtype(), stream.cuda()));
  }
}

// The backward of training mode: dinp = d(out)/d(inp) . dout (overwritten);
// dweight += sum over (N, H, W) of dout * normalized inp; dbias += sum over
// (N, H, W) of dout. save_mean and save_rstd are the training forward's.
// dinp may alias dout, element for element; it must not overlap anything else.
inline void batchnorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                               const Tensor& inp, const Tensor& weight, const Tensor& save_mean,
                               const Tensor& save_rstd, const Stream& stream) {
  const char* op = "batchnorm_backward";
  int64_t N, C, HW;
  batchnorm_detail::check_activation(inp, &N, &C, &HW, op);
  batchnorm_detail::check_like(dinp, inp, "dinp", op);
  batchnorm_detail::check_like(dout, inp, "dout", op);
  batchnorm_detail::check_param(weight, inp, C, "weight", op);
  batchnorm_detail::check_param(dweight, inp, C, "dweight", op);
  batchnorm_detail::check_param(dbias, inp, C, "dbias", op);
  batchnorm_detail::check_same_params({&weight, &dweight, &dbias}, op);
  batchnorm_detail::check_stat(save_mean, inp, C, "save_mean", op);
  batchnorm_detail::check_stat(save_rstd, inp, C, "save_rstd", op);
  TANDEM_CHECK(dinp.data() == dout.data() || !overlaps(dinp, dout),
               std::string(op) + ": dinp overlaps dout without being the same elements");
  TANDEM_CHECK(!overlaps(dinp, inp), std::string(op) + ": dinp overlaps inp");
  if (inp.device().is_cpu()) {
    cpu::batchnorm_backward(dinp.data_as<float>(), dweight.data_as<float>(), dbias.data_as<float>(),
                            dout.data_as<float>(), inp.data_as<float>(), weight.data_as<float>(),
                            save_mean.data_as<float>(), save_rstd.data_as<float>(), N, C, HW);
  } else {
    TANDEM_CUDA_ONLY(cuda::batchnorm_backward(dinp.data(), dweight.data(), dbias.data(), dout.data(), inp.data(),
                                              weight.data(), save_mean.data_as<float>(),
                                              save_rstd.data_as<float>(), N, C, HW, inp.dtype(), weight.dtype(),
                                              stream.cuda()));
  }
}

}  // namespace tandem::kernels
