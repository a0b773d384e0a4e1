// The building blocks: Linear, ReLU, GELU, LayerNorm, Embedding, Dropout,
// Sequential, and the CrossEntropy loss. Each is a thin shell over its
// kernels (kernels/*.h); parameters are views of a ParameterSet.
#pragma once

#include "kernels/activation.h"
#include "runtime/module.h"

namespace tandem {

// y = x W^T + b, W of shape (out, in) as PyTorch's nn.Linear. Initialised as
// PyTorch does: U(-1/sqrt(in), 1/sqrt(in)) for W and b.
class Linear : public Module {
 public:
  Linear(ParameterSet& params, const std::string& prefix, int64_t in_features, int64_t out_features,
         bool bias = true);
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return "Linear"; }
  const Parameter& weight() const { return *weight_; }

 private:
  int64_t in_, out_;
  Parameter* weight_;
  Parameter* bias_ = nullptr;
  Tensor input_, output_, grad_input_;
};

class Activation : public Module {
 public:
  explicit Activation(kernels::Activation kind) : kind_(kind) {}
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return kind_ == kernels::Activation::relu ? "ReLU" : "GELU"; }

 private:
  kernels::Activation kind_;
  Tensor input_, output_, grad_input_;
};

class ReLU : public Activation {
 public:
  ReLU() : Activation(kernels::Activation::relu) {}
};

class GELU : public Activation {
 public:
  GELU() : Activation(kernels::Activation::gelu) {}
};

// Normalises the last dimension; weight starts at 1, bias at 0.
class LayerNorm : public Module {
 public:
  LayerNorm(ParameterSet& params, const std::string& prefix, int64_t features, float eps = 1e-5f);
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return "LayerNorm"; }

 private:
  int64_t features_;
  float eps_;
  Parameter* weight_;
  Parameter* bias_;
  Tensor input_, output_, mean_, rstd_, grad_input_;
};

// Looks up rows of a (num, dim) table by i32 index; N(0, 1) init as PyTorch.
// backward returns an undefined tensor: indices have no gradient.
class Embedding : public Module {
 public:
  Embedding(ParameterSet& params, const std::string& prefix, int64_t num, int64_t dim);
  Tensor forward(const Tensor& indices, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return "Embedding"; }

 private:
  int64_t dim_;
  Parameter* weight_;
  Tensor indices_, output_;
};

// Inverted dropout with a Philox mask: nothing is stored, backward draws
// the same mask again from the counters forward used.
class Dropout : public Module {
 public:
  explicit Dropout(float p);
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return "Dropout"; }

 private:
  float p_;
  uint64_t offset_ = 0;  // first Philox counter of the last forward
  bool applied_ = false; // false in eval mode: forward was the identity
  Tensor output_, grad_input_;
};

class Sequential : public Module {
 public:
  // Appends a module; returns it for configuration.
  template <typename M>
  M& add(std::unique_ptr<M> module) {
    M& ref = *module;
    modules_.push_back(std::move(module));
    return ref;
  }
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return "Sequential"; }
  size_t size() const { return modules_.size(); }

 private:
  std::vector<std::unique_ptr<Module>> modules_;
};

// Mean softmax cross-entropy over the rows whose target is >= 0.
class CrossEntropyLoss {
 public:
  // logits (N, C); targets (N) i32 on the same device. Returns the per-row
  // losses (N) f32; mean() reads their mean back to the host.
  Tensor forward(const Tensor& logits, const Tensor& targets, Context& ctx);
  // The gradient of `scale` times the mean loss with respect to the logits
  // (scale = 1 / micro-steps under gradient accumulation), written over the
  // logits forward() took: they are dead by then, and a second (N, C)
  // tensor would be GPT-2's largest (N x 50257).
  Tensor backward(Context& ctx, float scale = 1.f);
  // Mean of the last forward's losses over the valid rows (synchronizes).
  double mean(Context& ctx);

 private:
  Tensor logits_, targets_, losses_;
  Tensor total_, scratch_, targets_host_;  // made once, reused
  int64_t num_valid_ = 0;
};

}  // namespace tandem
