// Modules for convolutional networks, over NCHW activations: Conv2d,
// BatchNorm2d, MaxPool2d, AvgPool2d, GlobalAvgPool and Reshape (Flatten is
// Reshape to (N, -1)), each a thin shell over its kernels (kernels/conv2d.h,
// kernels/batchnorm.h, kernels/pool.h) with PyTorch's semantics, names and
// initialisation.
#pragma once

#include "kernels/batchnorm.h"
#include "kernels/conv2d.h"
#include "kernels/pool.h"
#include "runtime/module.h"

namespace tandem {

struct Conv2dOptions {
  int64_t kernel = 3, stride = 1, padding = 0;
  bool bias = true;
};

// out = conv2d(x, W) + b with W (out, in, k, k), as nn.Conv2d (groups 1),
// initialised as PyTorch does: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and b,
// fan_in = in * k * k.
class Conv2d : public Module {
 public:
  Conv2d(ParameterSet& params, const std::string& prefix, int64_t in_channels, int64_t out_channels,
         const Conv2dOptions& options);
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return "Conv2d"; }

 private:
  int64_t in_, out_;
  Conv2dOptions opt_;
  Parameter* weight_;
  Parameter* bias_ = nullptr;
  kernels::Conv2dShape shape_{};
  Tensor input_, output_, grad_input_, workspace_;
};

// nn.BatchNorm2d: in training, normalizes with the batch's statistics and
// updates the running ones (momentum 0.1, unbiased variance); in
// evaluation, normalizes with the running ones. weight starts at 1, bias
// at 0; running_mean (0) and running_var (1) are buffers
// (ParameterSet::add_buffer): checkpointed with the weights, and under
// data parallelism rank 0's (see runtime/trainer.cpp), as PyTorch DDP's
// broadcast_buffers gives.
class BatchNorm2d : public Module {
 public:
  BatchNorm2d(ParameterSet& params, const std::string& prefix, int64_t channels, float eps = 1e-5f,
              float momentum = 0.1f);
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return "BatchNorm2d"; }

 private:
  int64_t channels_;
  kernels::BatchNormOptions opt_;
  Parameter *weight_, *bias_, *running_mean_, *running_var_;
  Tensor input_, output_, save_mean_, save_rstd_, grad_input_;
};

// Max or average pooling over k x k windows (stride defaults to k), as
// nn.MaxPool2d / nn.AvgPool2d (average: padding counted, PyTorch's default).
class Pool2d : public Module {
 public:
  enum class Kind { max, avg };
  Pool2d(Kind kind, int64_t kernel, int64_t stride = 0, int64_t padding = 0);
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return kind_ == Kind::max ? "MaxPool2d" : "AvgPool2d"; }

 private:
  Kind kind_;
  int64_t kernel_, stride_, padding_;
  kernels::Pool2dShape shape_{};
  Tensor output_, argmax_, grad_input_;
};

// (N, C, H, W) -> (N, C): the mean of each plane (nn.AdaptiveAvgPool2d(1) + Flatten).
class GlobalAvgPool : public Module {
 public:
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return "GlobalAvgPool"; }

 private:
  Shape input_shape_;
  Tensor output_, grad_input_;
};

// A view with the batch dimension kept and the rest reshaped to `dims`
// (-1: whatever is left); backward views the gradient back. Flatten is
// Reshape({-1}); Fashion-MNIST's 784 features become an image with
// Reshape({1, 28, 28}).
class Reshape : public Module {
 public:
  explicit Reshape(std::vector<int64_t> dims) : dims_(std::move(dims)) {}
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return "Reshape"; }

 private:
  std::vector<int64_t> dims_;
  Shape input_shape_;
};

}  // namespace tandem
