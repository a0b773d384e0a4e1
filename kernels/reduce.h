// Deterministic full reductions to one f32 scalar, for loss means and the
// global gradient norm (norm_squared over the flat gradient buffer; the
// caller takes the sqrt).
//
// Note [Deterministic reduction]: the CUDA version runs two passes with a
// grid of kReduceScratchElems blocks fixed at compile time, never sized by
// the device: pass 1 leaves one partial per block in `scratch`, pass 2 sums
// the partials in one block. Which element lands in which partial, and the
// order of every addition, depend only on n, so a sum is bitwise the same in
// every run and on every GPU. (A grid sized by the SM count, or atomics,
// would make the last bits depend on the device or the schedule.) Each
// thread accumulates in double; the tree sums over threads and partials are
// fp32. The CPU accumulates in double, in index order.
#pragma once

#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

// Elements of the f32 scratch the CUDA reductions need (one per block of
// pass 1). The CPU needs none.
constexpr int64_t kReduceScratchElems = 1024;

namespace cpu {
void sum(float* out, const float* x, int64_t n);           // out[0] = sum x
void norm_squared(float* out, const float* x, int64_t n);  // out[0] = sum x^2
}  // namespace cpu

namespace cuda {
// scratch: (kReduceScratchElems) f32, must not overlap x or out.
void sum(float* out, const void* x, int64_t n, DType dtype, float* scratch, CUstream_st* stream);
void norm_squared(float* out, const void* x, int64_t n, DType dtype, float* scratch, CUstream_st* stream);
}  // namespace cuda

namespace detail {

inline void check_reduce(const Tensor& out, const Tensor& x, const Tensor& scratch, const char* op) {
  check_float(x, op);
  TANDEM_CHECK(out.defined() && out.dtype() == DType::f32, std::string(op) + ": out must be f32");
  check_same_device(out, x, op);
  check_numel(out, 1, op);
  if (x.device().is_cuda()) {
    TANDEM_CHECK(scratch.defined() && scratch.dtype() == DType::f32,
                 std::string(op) + ": CUDA reductions need an f32 scratch tensor");
    check_same_device(scratch, x, op);
    TANDEM_CHECK(scratch.numel() >= kReduceScratchElems,
                 std::string(op) + ": scratch holds " + std::to_string(scratch.numel()) +
                     " elements, needs kReduceScratchElems = " + std::to_string(kReduceScratchElems));
  }
}

}  // namespace detail

// out (1) f32 = sum of all elements of x (any shape, f32; bf16 on CUDA).
// scratch: f32, >= kReduceScratchElems elements on CUDA; may be undefined
// on the CPU. out is overwritten; n = 0 gives 0.
inline void sum(const Tensor& out, const Tensor& x, const Tensor& scratch, const Stream& stream) {
  detail::check_reduce(out, x, scratch, "sum");
  if (x.device().is_cpu()) {
    cpu::sum(out.data_as<float>(), x.data_as<float>(), x.numel());
  } else {
    TANDEM_CUDA_ONLY(cuda::sum(out.data_as<float>(), x.data(), x.numel(), x.dtype(), scratch.data_as<float>(),
                               stream.cuda()));
  }
}

// out (1) f32 = sum of x^2; same contract as sum.
inline void norm_squared(const Tensor& out, const Tensor& x, const Tensor& scratch, const Stream& stream) {
  detail::check_reduce(out, x, scratch, "norm_squared");
  if (x.device().is_cpu()) {
    cpu::norm_squared(out.data_as<float>(), x.data_as<float>(), x.numel());
  } else {
    TANDEM_CUDA_ONLY(cuda::norm_squared(out.data_as<float>(), x.data(), x.numel(), x.dtype(),
                                        scratch.data_as<float>(), stream.cuda()));
  }
}

}  // namespace tandem::kernels
