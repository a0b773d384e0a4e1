// Parameters and their gradients live in two flat buffers, one element type
// each; a Parameter's value and grad are views into them (DESIGN.md: "a
// module's tensors are views into them"). The optimizer state, DDP buckets
// and checkpoints are then slices of the same flat buffers, never copies.
//
// Two phases: modules add() their parameters while the model is built, then
// allocate() makes the buffers, binds every view and initialises the values.
#pragma once

#include <deque>
#include <string>
#include <vector>

#include "runtime/core/tensor.h"

namespace tandem {

// How a parameter starts. Values come from Philox keyed by the run's seed
// and the parameter's index, so they are the same on every device and rank.
struct Init {
  enum class Kind { zeros, ones, uniform, normal };
  Kind kind = Kind::zeros;
  float scale = 0;  // uniform: U(-scale, scale); normal: N(0, scale^2)

  static Init zeros() { return {Kind::zeros, 0}; }
  static Init ones() { return {Kind::ones, 0}; }
  static Init uniform(float bound) { return {Kind::uniform, bound}; }
  static Init normal(float stddev) { return {Kind::normal, stddev}; }
};

struct Parameter {
  std::string name;  // PyTorch state_dict style: "layers.0.weight"
  Shape shape;
  Init init;
  int64_t offset = 0;  // elements from the start of the flat buffers
  Tensor value;        // view of ParameterSet::values()
  Tensor grad;         // view of ParameterSet::grads()
  // Files hold the transpose of `shape`: a 2-D weight that Hugging Face
  // stores as Conv1D (in, out) while our matmul takes (out, in).
  bool transposed_in_file = false;
  int64_t numel() const { return shape_numel(shape); }
};

class ParameterSet {
 public:
  // Registers a parameter; the pointer stays valid for the set's lifetime.
  Parameter* add(std::string name, Shape shape, Init init, bool transposed_in_file = false);

  // Registers a buffer (PyTorch's register_buffer): state that the model
  // keeps and checkpoints but does not train, such as batch norm's running
  // statistics. Buffers live in their own flat fp32 tensor (whatever the
  // parameters' dtype), start as `init` (zeros or ones), have no gradient,
  // and are not part of numel() or the optimizer's state.
  Parameter* add_buffer(std::string name, Shape shape, Init init);

  // The initial values as a flat fp32 CPU tensor, drawn from `seed`. Data
  // parallelism broadcasts rank 0's before allocate; the optimizer seeds
  // its fp32 master copy from the same tensor.
  Tensor initial_values(uint64_t seed) const;
  // Makes initial_values() return `values` (fp32 CPU, numel() elements)
  // whatever the seed: a model starting from pretrained weights.
  void set_initial_values(Tensor values);

  // Makes the flat buffers on `device` in `dtype`, binds every view and
  // fills the values from `initial` (fp32, numel() elements, any device;
  // cast to `dtype`). Gradients start at zero; buffers at their init.
  void allocate(Device device, DType dtype, const Tensor& initial);
  void allocate(Device device, DType dtype, uint64_t seed) { allocate(device, dtype, initial_values(seed)); }
  bool allocated() const { return values_.defined(); }

  const Tensor& values() const { return values_; }
  const Tensor& grads() const { return grads_; }
  int64_t numel() const { return numel_; }  // the flat buffers' length, alignment gaps included
  // The parameters' elements: what "N parameters" means.
  int64_t count() const {
    int64_t n = 0;
    for (const Parameter& p : params_) n += p.numel();
    return n;
  }
  const std::deque<Parameter>& list() const { return params_; }
  const Tensor& buffer_values() const { return buffer_values_; }  // flat fp32; undefined when there are none
  const std::deque<Parameter>& buffer_list() const { return buffers_; }
  int64_t buffer_numel() const { return buffer_numel_; }
  const Parameter& find(const std::string& name) const;

  void zero_grads(const Stream& stream) const { grads_.zero(stream); }

 private:
  std::deque<Parameter> params_;  // deque: add() never moves earlier ones
  std::deque<Parameter> buffers_;
  int64_t numel_ = 0, buffer_numel_ = 0;
  Tensor values_, grads_, buffer_values_;
  Tensor pretrained_;  // set_initial_values()
};

// A parameter's fp32 values (`value`, in p.shape) as a file holds them: the
// tensor itself, or a transposed CPU copy when p.transposed_in_file.
Tensor to_file_layout(const Parameter& p, const Tensor& value);

// Writes p's values read from a file (f32 or bf16, in the file layout) to
// `dst` (p.numel() floats, p.shape); UserError naming `where` when the
// tensor's shape or dtype do not fit.
void from_file_layout(const Parameter& p, const Tensor& file_tensor, float* dst, const std::string& where);

}  // namespace tandem
