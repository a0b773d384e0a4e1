// Fused softmax + cross-entropy over the last dimension (the classifier
// head), one loss per row of logits:
//
//   losses[n]  = logsumexp(logits[n]) - logits[n][t],      t = targets[n]
//   dlogits[n] = (softmax(logits[n]) - onehot(t)) * dloss
//
// A target < 0 marks an ignored row (padding): its loss is 0 and its
// gradient row is 0. The backward recomputes the softmax from the logits, so
// no (N, V) probability tensor is ever stored, and it may write dlogits over
// the logits (they are dead once the gradient exists): see Note [In-place
// dlogits] in kernels/cuda/softmax_cross_entropy.cu.
//
// dloss is one upstream gradient shared by every row: 1 / num_valid for a
// mean loss, 1 for a sum. dlogits is an activation gradient, so it is
// overwritten (Note [Gradient writes] in kernels/common.h).
//
// Targets >= V: the CPU twin throws. On CUDA they are a precondition the
// caller must guarantee (checking would need a device-to-host sync); the
// kernels never read out of bounds for them but give that row a NaN loss and
// NaN gradients, so a violation shows up at once instead of training quietly.
#pragma once

#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

namespace cpu {
void softmax_cross_entropy_forward(float* losses,                        // (N)
                                   const float* logits,                  // (N, V)
                                   const int32_t* targets,               // (N)
                                   int64_t N, int64_t V);
void softmax_cross_entropy_backward(float* dlogits,                      // (N, V), may alias logits
                                    const float* logits,                 // (N, V)
                                    const int32_t* targets,              // (N)
                                    float dloss, int64_t N, int64_t V);
}  // namespace cpu

namespace cuda {
// logits and dlogits: `dtype` (f32 or bf16); losses: f32; targets: i32.
void softmax_cross_entropy_forward(float* losses, const void* logits, const int32_t* targets, int64_t N,
                                   int64_t V, DType dtype, CUstream_st* stream);
void softmax_cross_entropy_backward(void* dlogits, const void* logits, const int32_t* targets, float dloss,
                                    int64_t N, int64_t V, DType dtype, CUstream_st* stream);
}  // namespace cuda

namespace softmax_cross_entropy_detail {
// Rows and classes of logits (..., V): V is the last dimension.
inline void rows_and_classes(const Tensor& logits, int64_t* N, int64_t* V, const char* op) {
  TANDEM_CHECK(logits.ndim() >= 1 && logits.dim(-1) >= 1,
               std::string(op) + ": expected logits (..., V) with V >= 1, got " + shape_str(logits.shape()));
  *V = logits.dim(-1);
  *N = logits.numel() / *V;
}

inline void check_targets(const Tensor& targets, const Tensor& logits, int64_t N, const char* op) {
  TANDEM_CHECK(targets.defined() && targets.dtype() == DType::i32, std::string(op) + ": targets must be i32");
  check_same_device(targets, logits, op);
  check_numel(targets, N, op);
}
}  // namespace softmax_cross_entropy_detail

// losses (N) f32 = per-row cross-entropy of logits (..., V) against targets (N) i32.
inline void softmax_cross_entropy_forward(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                                          const Stream& stream) {
  const char* op = "softmax_cross_entropy_forward";
  int64_t N, V;
  softmax_cross_entropy_detail::rows_and_classes(logits, &N, &V, op);
  check_float(logits, op);
  softmax_cross_entropy_detail::check_targets(targets, logits, N, op);
  TANDEM_CHECK(losses.defined() && losses.dtype() == DType::f32, std::string(op) + ": losses must be f32");
  check_same_device(losses, logits, op);
  check_numel(losses, N, op);
  if (logits.device().is_cpu()) {
    cpu::softmax_cross_entropy_forward(losses.data_as<float>(), logits.data_as<float>(),
                                       targets.data_as<int32_t>(), N, V);
  } else {
    TANDEM_CUDA_ONLY(cuda::softmax_cross_entropy_forward(losses.data_as<float>(), logits.data(),
                                                         targets.data_as<int32_t>(), N, V, logits.dtype(),
                                                         stream.cuda()));
  }
}

// dlogits = (softmax(logits) - onehot(targets)) * dloss, overwritten; rows
// with a negative target get 0. dlogits may be the logits tensor itself.
inline void softmax_cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                                           float dloss, const Stream& stream) {
  const char* op = "softmax_cross_entropy_backward";
  int64_t N, V;
  softmax_cross_entropy_detail::rows_and_classes(logits, &N, &V, op);
  check_same_float(dlogits, logits, op);
  check_numel(dlogits, N * V, op);
  softmax_cross_entropy_detail::check_targets(targets, logits, N, op);
  if (logits.device().is_cpu()) {
    cpu::softmax_cross_entropy_backward(dlogits.data_as<float>(), logits.data_as<float>(),
                                        targets.data_as<int32_t>(), dloss, N, V);
  } else {
    TANDEM_CUDA_ONLY(cuda::softmax_cross_entropy_backward(dlogits.data(), logits.data(),
                                                          targets.data_as<int32_t>(), dloss, N, V,
                                                          logits.dtype(), stream.cuda()));
  }
}

}  // namespace tandem::kernels
