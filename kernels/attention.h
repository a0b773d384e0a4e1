// Causal multi-head self-attention (GPT-2), forward and backward, straight
// from the c_attn output:
//
//   qkv (B, T, 3C): per position [q | k | v], each C = NH * HS wide; head h
//                   owns columns [h*HS, (h+1)*HS) of each of the three
//                   (GPT-2's c_attn layout, as in llm.c).
//   out (B, T, C):  head h's output in columns [h*HS, (h+1)*HS), ready for
//                   c_proj.
//   lse (B, NH, T): f32, the log-sum-exp of each query row's scores.
//
// With scale = 1 / sqrt(HS), for each batch b, head h and query i:
//
//   s_ij = scale * q_i . k_j   (j <= i; keys j > i are masked out)
//   lse_i = log sum_{j <= i} exp(s_ij),   p_ij = exp(s_ij - lse_i)
//   out_i = sum_{j <= i} p_ij v_j
//
// The backward recomputes p from qkv and lse, so no (T, T) matrix is ever
// stored: with D_i = dout_i . out_i and dp_ij = dout_i . v_j,
//
//   ds_ij = p_ij (dp_ij - D_i)
//   dq_i = scale sum_{j <= i} ds_ij k_j,   dk_j = scale sum_{i >= j} ds_ij q_i,
//   dv_j = sum_{i >= j} p_ij dout_i.
//
// dqkv is an activation gradient, so it is overwritten (Note [Gradient
// writes] in kernels/common.h). The CUDA backward is deterministic, bitwise
// run to run (no atomics); see kernels/cuda/attention.cu for its design.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

namespace cpu {
void attention_forward(float* out, float* lse,                          // (B, T, C), (B, NH, T)
                       const float* qkv,                                // (B, T, 3C)
                       int64_t B, int64_t T, int64_t NH, int64_t HS);
void attention_backward(float* dqkv,                                     // (B, T, 3C) =
                        const float* dout, const float* qkv,             // (B, T, C), (B, T, 3C)
                        const float* out, const float* lse,              // (B, T, C), (B, NH, T)
                        int64_t B, int64_t T, int64_t NH, int64_t HS);
}  // namespace cpu

namespace cuda {
// The largest head size the CUDA kernels take (GPT-2 uses 64): each lane of
// a warp keeps HS / 32 accumulators of its row in registers, and the
// shared-memory tiles are sized for this HS.
constexpr int64_t kAttentionMaxHeadSize = 128;

// qkv, out, dqkv, dout: `dtype` (f32 or bf16); lse: always f32.
void attention_forward(void* out, float* lse, const void* qkv, int64_t B, int64_t T, int64_t NH, int64_t HS,
                       DType dtype, CUstream_st* stream);
void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                        int64_t B, int64_t T, int64_t NH, int64_t HS, DType dtype, CUstream_st* stream);
}  // namespace cuda

// Multiply-adds of the forward's two products (q k^T and p v) over the
// causal half, times two: its FLOP count. The backward does 2.5x as much
// (it recomputes q k^T, and adds dout v^T, ds k, ds^T q and p^T dout).
inline double attention_forward_flops(int64_t B, int64_t T, int64_t NH, int64_t HS) {
  double pairs = static_cast<double>(T) * static_cast<double>(T + 1) / 2.0;  // (i, j) with j <= i
  return 4.0 * static_cast<double>(B) * static_cast<double>(NH) * pairs * static_cast<double>(HS);
}

namespace attention_detail {

struct Sizes {
  int64_t B, T, NH, HS;
  int64_t C() const { return NH * HS; }
};

// B, T and HS from qkv (B, T, 3C) and the number of heads.
inline Sizes sizes_of(const Tensor& qkv, int64_t num_heads, const char* op) {
  TANDEM_CHECK(qkv.ndim() == 3, std::string(op) + ": qkv must be (B, T, 3C), got " + shape_str(qkv.shape()));
  TANDEM_CHECK(num_heads >= 1, std::string(op) + ": num_heads must be >= 1, got " + std::to_string(num_heads));
  int64_t three_c = qkv.dim(2);
  TANDEM_CHECK(three_c >= 3 * num_heads && three_c % (3 * num_heads) == 0,
               std::string(op) + ": qkv's last dimension (3C = " + std::to_string(three_c) +
                   ") must be a positive multiple of 3 * num_heads = " + std::to_string(3 * num_heads));
  return {qkv.dim(0), qkv.dim(1), num_heads, three_c / (3 * num_heads)};
}

inline void check_shape(const Tensor& t, const Shape& want, const char* name, const char* op) {
  TANDEM_CHECK(t.shape() == want, std::string(op) + ": " + name + " must be " + shape_str(want) + ", got " +
                                      shape_str(t.shape()));
}

// lse: f32 (B, NH, T) on qkv's device.
inline void check_lse(const Tensor& lse, const Tensor& qkv, const Sizes& s, const char* op) {
  TANDEM_CHECK(lse.defined() && lse.dtype() == DType::f32, std::string(op) + ": lse must be a defined f32 tensor");
  check_same_device(lse, qkv, op);
  check_shape(lse, {s.B, s.NH, s.T}, "lse (B, NH, T)", op);
}

inline void check_no_overlap(const Tensor& written, const Tensor& other, const char* names, const char* op) {
  TANDEM_CHECK(!overlaps(written, other), std::string(op) + ": " + names + " overlap; they must not alias");
}

}  // namespace attention_detail

// out = causal softmax(q k^T / sqrt(HS)) v per head, and lse for the
// backward. out and lse must not alias qkv or each other.
inline void attention_forward(const Tensor& out /* (B, T, C) */, const Tensor& lse /* (B, NH, T) f32 */,
                              const Tensor& qkv /* (B, T, 3C) */, int64_t num_heads, const Stream& stream) {
  const char* op = "attention_forward";
  using namespace attention_detail;
  check_float(qkv, op);
  Sizes s = sizes_of(qkv, num_heads, op);
  check_same_float(out, qkv, op);
  check_shape(out, {s.B, s.T, s.C()}, "out (B, T, C)", op);
  check_lse(lse, qkv, s, op);
  check_no_overlap(out, qkv, "out and qkv", op);
  check_no_overlap(lse, qkv, "lse and qkv", op);
  check_no_overlap(lse, out, "lse and out", op);
  if (qkv.device().is_cpu()) {
    cpu::attention_forward(out.data_as<float>(), lse.data_as<float>(), qkv.data_as<float>(), s.B, s.T, s.NH, s.HS);
  } else {
    TANDEM_CUDA_ONLY(cuda::attention_forward(out.data(), lse.data_as<float>(), qkv.data(), s.B, s.T, s.NH, s.HS,
                                             qkv.dtype(), stream.cuda()));
  }
}

// dqkv = d(out)/d(qkv) . dout, overwritten. out and lse are the forward's
// results for this qkv. dqkv must not alias any input.
inline void attention_backward(const Tensor& dqkv /* (B, T, 3C) */, const Tensor& dout /* (B, T, C) */,
                               const Tensor& qkv /* (B, T, 3C) */, const Tensor& out /* (B, T, C) */,
                               const Tensor& lse /* (B, NH, T) f32 */, int64_t num_heads, const Stream& stream) {
  const char* op = "attention_backward";
  using namespace attention_detail;
  check_float(qkv, op);
  Sizes s = sizes_of(qkv, num_heads, op);
  check_same_float(dqkv, qkv, op);
  check_same_float(dout, qkv, op);
  check_same_float(out, qkv, op);
  check_shape(dqkv, qkv.shape(), "dqkv (B, T, 3C)", op);
  check_shape(dout, {s.B, s.T, s.C()}, "dout (B, T, C)", op);
  check_shape(out, {s.B, s.T, s.C()}, "out (B, T, C)", op);
  check_lse(lse, qkv, s, op);
  check_no_overlap(dqkv, qkv, "dqkv and qkv", op);
  check_no_overlap(dqkv, dout, "dqkv and dout", op);
  check_no_overlap(dqkv, out, "dqkv and out", op);
  check_no_overlap(dqkv, lse, "dqkv and lse", op);
  if (qkv.device().is_cpu()) {
    cpu::attention_backward(dqkv.data_as<float>(), dout.data_as<float>(), qkv.data_as<float>(),
                            out.data_as<float>(), lse.data_as<float>(), s.B, s.T, s.NH, s.HS);
  } else {
    TANDEM_CUDA_ONLY(cuda::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(),
                                              lse.data_as<float>(), s.B, s.T, s.NH, s.HS, qkv.dtype(),
                                              stream.cuda()));
  }
}

}  // namespace tandem::kernels
