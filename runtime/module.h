// Modules with explicit forward and backward, as in llm.c: no autograd
// tape. forward() keeps what backward() needs (its input, saved statistics);
// backward() takes the gradient of the output, writes parameter gradients
// (+=, into views of the flat gradient buffer) and returns the gradient of
// the input (see Note [Gradient writes] in kernels/common.h).
//
// Activation buffers belong to the module that writes them and are reused
// from step to step; they are reallocated only when the batch shape changes.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/core/tensor.h"
#include "runtime/parameters.h"
#include "runtime/trace.h"

namespace tandem {

// What every module's forward/backward runs with.
struct Context {
  Device device = Device::cpu();
  DType dtype = DType::f32;  // activations and parameter values
  Stream stream;             // the compute stream
  bool training = true;
  uint64_t seed = 0;         // the run's seed (dropout draws from it)
  uint64_t rng_offset = 0;   // next unused Philox counter of this step
  // This micro-batch's slice of the optimizer step's global batch: slot
  // `batch_slot` of `batch_slots` equal slices (micro-step * world size +
  // rank, of accumulation steps * world size).
  int64_t batch_slot = 0, batch_slots = 1;

  // Called during backward as soon as a parameter's gradient is final (the
  // data-parallel reducer starts all-reducing full buckets from here).
  std::function<void(const Parameter&)> grad_ready;

  // When set, Sequential records each module's forward and backward here.
  TraceWriter* trace = nullptr;

  // Reserves Philox counters for `n` local elements; returns the first.
  // Counters are laid out over the step's global batch, slice by slice, so
  // each slice draws exactly what one process with the whole batch would
  // draw for those rows: dropout depends neither on the world size nor on
  // gradient accumulation.
  uint64_t take_rng(int64_t n) {
    uint64_t first = rng_offset + static_cast<uint64_t>(batch_slot) * static_cast<uint64_t>(n);
    rng_offset += static_cast<uint64_t>(batch_slots) * static_cast<uint64_t>(n);
    return first;
  }
};

class Module {
 public:
  virtual ~Module() = default;
  virtual Tensor forward(const Tensor& input, Context& ctx) = 0;
  virtual Tensor backward(const Tensor& grad_output, Context& ctx) = 0;

  // What the module is, for traces: "Linear", "ReLU", ...
  virtual const char* kind() const { return "Module"; }

  // The parameters this module holds itself (not its children's).
  const std::vector<const Parameter*>& parameters() const { return own_; }

 protected:
  Parameter* own(Parameter* p) {
    own_.push_back(p);
    return p;
  }

 private:
  std::vector<const Parameter*> own_;
};

// Returns `buffer`, reallocated if its shape, dtype or device differ.
Tensor& ensure_buffer(Tensor& buffer, const Shape& shape, DType dtype, Device device);

// Flattens every dimension but the last: (B, T, C) -> (B*T, C).
inline Shape rows_by_last(const Tensor& t) { return {t.numel() / t.dim(-1), t.dim(-1)}; }

}  // namespace tandem
