// The sizes of one causal-attention test case and the shapes they give,
// for the CPU tests (tests/kernels/attention.cpp) and the CUDA twin tests
// (tests/gpu/attention.cpp).
#pragma once

#include <cstdint>

#include "runtime/core/tensor.h"

namespace tandem::testing {

struct AttentionDims {
  int64_t B, T, NH, HS;
  int64_t C() const { return NH * HS; }
  Shape qkv() const { return {B, T, 3 * C()}; }
  Shape out() const { return {B, T, C()}; }
  Shape lse() const { return {B, NH, T}; }
};

}  // namespace tandem::testing
