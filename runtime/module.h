// Modules with explicit forward and backward, as in llm.c: no autograd
// tape. forward() keeps what backward() needs (its input, saved statistics);
// backward() takes the gradient of the output, writes parameter gradients
// (+=, into views of the flat gradient buffer) and returns the gradient of
// the input (see Note [Gradient writes] in kernels/common.h).
//
// Activation buffers belong to the module that writes them and are reused
// from step to step; they are reallocated only when the batch shape changes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/core/tensor.h"
#include "runtime/parameters.h"

namespace tandem {

// What every module's forward/backward runs with.
struct Context {
  Device device = Device::cpu();
  DType dtype = DType::f32;  // activations and parameter values
  Stream stream;             // the compute stream
  bool training = true;
  uint64_t seed = 0;         // the run's seed (dropout draws from it)
  uint64_t rng_offset = 0;   // next unused Philox counter of this step

  // Reserves `n` Philox counters; returns the first.
  uint64_t take_rng(int64_t n) {
    uint64_t first = rng_offset;
    rng_offset += static_cast<uint64_t>(n);
    return first;
  }
};

class Module {
 public:
  virtual ~Module() = default;
  virtual Tensor forward(const Tensor& input, Context& ctx) = 0;
  virtual Tensor backward(const Tensor& grad_output, Context& ctx) = 0;
};

// Returns `buffer`, reallocated if its shape, dtype or device differ.
Tensor& ensure_buffer(Tensor& buffer, const Shape& shape, DType dtype, Device device);

// Flattens every dimension but the last: (B, T, C) -> (B*T, C).
inline Shape rows_by_last(const Tensor& t) { return {t.numel() / t.dim(-1), t.dim(-1)}; }

}  // namespace tandem
