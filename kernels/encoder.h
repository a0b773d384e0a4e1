// GPT-2's input encoding: token embedding plus position embedding, forward
// and backward.
//
//   out[b][t]   = wte[tokens[b][t]] + wpe[t]
//   dwte[v]    += sum of dout[b][t] over the (b, t) with tokens[b][t] == v
//   dwpe[t]    += sum over b of dout[b][t]
//
// wte and wpe are parameters, so both gradients accumulate (Note [Gradient
// writes] in kernels/common.h).
//
// Note [Deterministic encoder backward]: the backward is bitwise the same run
// to run, and in f32 CUDA equals the CPU twin bit for bit:
//   - dwte is embedding_backward over the B * T rows of dout taken as
//     n = b * T + t, so for every (v, c) the fp32 chain runs in increasing n
//     (Note [Deterministic embedding backward] in kernels/embedding.h; the
//     CUDA encoder calls that very kernel);
//   - dwpe, for every (t, c), is the fp32 chain
//       ((dwpe[t][c] + dout[0][t][c]) + dout[1][t][c]) + ...,  b increasing,
//     run by one thread on CUDA and by the CPU twin's plain loop; with bf16
//     storage it is rounded once, when stored.
// The forward is one fp32 addition per element, rounded once to the storage
// dtype: f32 CUDA equals the CPU twin, and bf16 CUDA equals it rounded to
// bf16.
//
// Tokens outside [0, V): the same policy as embedding. The CPU twin throws
// before writing anything. On CUDA they are a precondition the caller must
// guarantee; the forward writes a NaN row, the dwte part of the backward
// skips the row, and dwpe still adds it (the position gradient does not
// depend on the token). T > maxT is a user error on every device.
#pragma once

#include <string>

#include "kernels/embedding.h"

namespace tandem::kernels {

namespace cpu {
void encoder_forward(float* out,                                    // (B, T, C)
                     const int32_t* tokens,                         // (B, T)
                     const float* wte, const float* wpe,            // (V, C), (maxT, C)
                     int64_t B, int64_t T, int64_t V, int64_t C);
void encoder_backward(float* dwte, float* dwpe,                     // (V, C) +=, (maxT, C) +=
                      const float* dout,                            // (B, T, C)
                      const int32_t* tokens,                        // (B, T)
                      int64_t B, int64_t T, int64_t V, int64_t C);
}  // namespace cpu

namespace cuda {
// out, wte, wpe, dwte, dwpe, dout: `dtype` (f32 or bf16); tokens: i32. Only
// the first T rows of wpe/dwpe are read or written, so maxT is not needed.
void encoder_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe, int64_t B, int64_t T,
                     int64_t V, int64_t C, DType dtype, CUstream_st* stream);
void encoder_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, int64_t B, int64_t T,
                      int64_t V, int64_t C, DType dtype, CUstream_st* stream);
}  // namespace cuda

namespace encoder_detail {
// tokens (B, T) i32; table (V, C) and act (B, T, C) as embedding checks them;
// positions (maxT, C) of the table's dtype and device with T <= maxT.
inline void check_args(const Tensor& act, const Tensor& table, const Tensor& positions, const Tensor& tokens,
                       const char* op) {
  TANDEM_CHECK(tokens.defined() && tokens.ndim() == 2,
               std::string(op) + ": tokens must be (B, T), got " +
                   (tokens.defined() ? shape_str(tokens.shape()) : std::string("an undefined tensor")));
  embedding_detail::check_args(act, table, tokens, op);
  check_same_float(positions, table, op);
  TANDEM_CHECK(positions.ndim() == 2 && positions.dim(1) == table.dim(1),
               std::string(op) + ": expected a (maxT, " + std::to_string(table.dim(1)) + ") position table, got " +
                   shape_str(positions.shape()));
  TANDEM_CHECK(tokens.dim(1) <= positions.dim(0),
               std::string(op) + ": sequence length T = " + std::to_string(tokens.dim(1)) +
                   " exceeds the " + std::to_string(positions.dim(0)) + " positions of the position table (maxT)");
}
}  // namespace encoder_detail

// out (B, T, C) = wte (V, C) rows picked by tokens (B, T) i32, plus wpe
// (maxT, C) rows 0..T-1; T <= maxT. out must not alias wte or wpe.
inline void encoder_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                            const Stream& stream) {
  const char* op = "encoder_forward";
  encoder_detail::check_args(out, wte, wpe, tokens, op);
  int64_t B = tokens.dim(0), T = tokens.dim(1), V = wte.dim(0), C = wte.dim(1);
  if (wte.device().is_cpu()) {
    cpu::encoder_forward(out.data_as<float>(), tokens.data_as<int32_t>(), wte.data_as<float>(),
                         wpe.data_as<float>(), B, T, V, C);
  } else {
    TANDEM_CUDA_ONLY(cuda::encoder_forward(out.data(), tokens.data_as<int32_t>(), wte.data(), wpe.data(), B, T, V,
                                           C, wte.dtype(), stream.cuda()));
  }
}

// dwte (V, C) += dout (B, T, C) scattered by tokens (B, T) i32; dwpe (maxT,
// C) rows 0..T-1 += dout summed over b. Deterministic (Note [Deterministic
// encoder backward]). dwte and dwpe must not alias dout or each other.
inline void encoder_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                             const Stream& stream) {
  const char* op = "encoder_backward";
  encoder_detail::check_args(dout, dwte, dwpe, tokens, op);
  int64_t B = tokens.dim(0), T = tokens.dim(1), V = dwte.dim(0), C = dwte.dim(1);
  if (dwte.device().is_cpu()) {
    cpu::encoder_backward(dwte.data_as<float>(), dwpe.data_as<float>(), dout.data_as<float>(),
                          tokens.data_as<int32_t>(), B, T, V, C);
  } else {
    TANDEM_CUDA_ONLY(cuda::encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data_as<int32_t>(), B, T,
                                            V, C, dwte.dtype(), stream.cuda()));
  }
}

}  // namespace tandem::kernels
