// Embedding lookup (token or position table), forward and backward.
//
//   out[n]       = table[indices[n]]
//   dtable[v]   += sum of dout[n] over the n with indices[n] == v
//
// dtable is a parameter gradient, so it accumulates (Note [Gradient writes]
// in kernels/common.h).
//
// Note [Deterministic embedding backward]: for every (v, c) the backward
// computes, in fp32,
//   ((dtable[v][c] + dout[n0][c]) + dout[n1][c]) + ...,   n0 < n1 < ... with indices[n] == v,
// i.e. exactly the CPU twin's plain loop in increasing n. So the result is
// bitwise the same run to run, and f32 CUDA equals the CPU twin bit for bit.
// With bf16 storage the chain runs in fp32 and is rounded to bf16 when
// stored; see kernels/cuda/embedding.cu for when that is more than once.
//
// Indices outside [0, V): the CPU twin throws (before writing anything). On
// CUDA they are a precondition the caller must guarantee (checking would need
// a device-to-host sync); the kernels never touch memory out of bounds for
// them: the forward writes a NaN row, the backward skips the row.
#pragma once

#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

namespace cpu {
void embedding_forward(float* out,                                 // (N, C)
                       const float* table,                         // (V, C)
                       const int32_t* indices,                     // (N)
                       int64_t N, int64_t V, int64_t C);
void embedding_backward(float* dtable,                             // (V, C) +=
                        const float* dout,                          // (N, C)
                        const int32_t* indices,                     // (N)
                        int64_t N, int64_t V, int64_t C);
}  // namespace cpu

namespace cuda {
// out, table, dtable, dout: `dtype` (f32 or bf16); indices: i32.
void embedding_forward(void* out, const void* table, const int32_t* indices, int64_t N, int64_t V, int64_t C,
                       DType dtype, CUstream_st* stream);
void embedding_backward(void* dtable, const void* dout, const int32_t* indices, int64_t N, int64_t V, int64_t C,
                        DType dtype, CUstream_st* stream);
}  // namespace cuda

namespace embedding_detail {
// The table is (V, C); indices may have any shape, N = their element count;
// the activation (..., C) has N * C elements.
inline void check_args(const Tensor& act, const Tensor& table, const Tensor& indices, const char* op) {
  check_same_float(act, table, op);
  TANDEM_CHECK(table.ndim() == 2, std::string(op) + ": expected a (V, C) table, got " + shape_str(table.shape()));
  TANDEM_CHECK(indices.defined() && indices.dtype() == DType::i32, std::string(op) + ": indices must be i32");
  check_same_device(indices, table, op);
  check_numel(act, indices.numel() * table.dim(1), op);
}
}  // namespace embedding_detail

// out (..., C) = rows of table (V, C) picked by indices (...) i32.
inline void embedding_forward(const Tensor& out, const Tensor& table, const Tensor& indices, const Stream& stream) {
  const char* op = "embedding_forward";
  embedding_detail::check_args(out, table, indices, op);
  int64_t N = indices.numel(), V = table.dim(0), C = table.dim(1);
  if (table.device().is_cpu()) {
    cpu::embedding_forward(out.data_as<float>(), table.data_as<float>(), indices.data_as<int32_t>(), N, V, C);
  } else {
    TANDEM_CUDA_ONLY(cuda::embedding_forward(out.data(), table.data(), indices.data_as<int32_t>(), N, V, C,
                                             table.dtype(), stream.cuda()));
  }
}

// dtable (V, C) += dout (..., C) scattered by indices (...) i32; deterministic
// (Note [Deterministic embedding backward]). dtable must not alias dout.
inline void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& indices,
                               const Stream& stream) {
  const char* op = "embedding_backward";
  embedding_detail::check_args(dout, dtable, indices, op);
  int64_t N = indices.numel(), V = dtable.dim(0), C = dtable.dim(1);
  if (dtable.device().is_cpu()) {
    cpu::embedding_backward(dtable.data_as<float>(), dout.data_as<float>(), indices.data_as<int32_t>(), N, V, C);
  } else {
    TANDEM_CUDA_ONLY(cuda::embedding_backward(dtable.data(), dout.data(), indices.data_as<int32_t>(), N, V, C,
                                              dtable.dtype(), stream.cuda()));
  }
}

}  // namespace tandem::kernels
