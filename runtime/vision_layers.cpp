#include "runtime/vision_layers.h"

#include <fmt/format.h>

#include <cmath>

namespace tandem {

namespace {

// (N, C, H, W) of a 4-D activation; `who` names the module in errors.
void check_nchw(const Tensor& t, int64_t channels, const char* who) {
  TANDEM_CHECK(t.ndim() == 4 && (channels < 0 || t.dim(1) == channels),
               fmt::format("{} expects (N, {}, H, W) input, got {}", who,
                           channels < 0 ? std::string("C") : std::to_string(channels), shape_str(t.shape())));
}

}  // namespace

// ---- Conv2d

Conv2d::Conv2d(ParameterSet& params, const std::string& prefix, int64_t in_channels, int64_t out_channels,
               const Conv2dOptions& options)
    : in_(in_channels), out_(out_channels), opt_(options) {
  float bound = 1.f / std::sqrt(static_cast<float>(in_channels * options.kernel * options.kernel));
  weight_ = own(params.add(prefix + ".weight", {out_channels, in_channels, options.kernel, options.kernel},
                           Init::uniform(bound)));
  if (options.bias) bias_ = own(params.add(prefix + ".bias", {out_channels}, Init::uniform(bound)));
}

Tensor Conv2d::forward(const Tensor& input, Context& ctx) {
  check_nchw(input, in_, "Conv2d");
  shape_ = {.N = input.dim(0), .C = in_, .H = input.dim(2), .W = input.dim(3), .K = out_, .R = opt_.kernel,
            .S = opt_.kernel, .stride_h = opt_.stride, .stride_w = opt_.stride, .pad_h = opt_.padding,
            .pad_w = opt_.padding};
  input_ = input;
  ensure_buffer(output_, {shape_.N, out_, shape_.P(), shape_.Q()}, ctx.dtype, ctx.device);
  // Opaque scratch, always f32: the im2col matrix on the CPU, cuDNN's on CUDA.
  ensure_buffer(workspace_, {kernels::conv2d_workspace_elems(shape_, ctx.dtype, ctx.device)}, DType::f32, ctx.device);
  kernels::conv2d_forward(output_, input_, weight_->value, bias_ ? bias_->value : Tensor(), shape_, workspace_,
                          ctx.stream);
  return output_;
}

Tensor Conv2d::backward(const Tensor& grad_output, Context& ctx) {
  kernels::conv2d_backward_filter(weight_->grad, bias_ ? bias_->grad : Tensor(), grad_output, input_, shape_,
                                  workspace_, ctx.stream);
  ensure_buffer(grad_input_, input_.shape(), ctx.dtype, ctx.device);
  kernels::conv2d_backward_data(grad_input_, grad_output, weight_->value, shape_, workspace_, ctx.stream);
  return grad_input_;
}

// ---- BatchNorm2d

BatchNorm2d::BatchNorm2d(ParameterSet& params, const std::string& prefix, int64_t channels, float eps, float momentum)
    : channels_(channels), opt_{.eps = eps, .momentum = momentum} {
  weight_ = own(params.add(prefix + ".weight", {channels}, Init::ones()));
  bias_ = own(params.add(prefix + ".bias", {channels}, Init::zeros()));
  running_mean_ = params.add_buffer(prefix + ".running_mean", {channels}, Init::zeros());
  running_var_ = params.add_buffer(prefix + ".running_var", {channels}, Init::ones());
}

Tensor BatchNorm2d::forward(const Tensor& input, Context& ctx) {
  check_nchw(input, channels_, "BatchNorm2d");
  input_ = input;
  ensure_buffer(output_, input.shape(), ctx.dtype, ctx.device);
  if (!ctx.training) {
    kernels::batchnorm_forward_eval(output_, input, weight_->value, bias_->value, running_mean_->value,
                                    running_var_->value, opt_, ctx.stream);
    return output_;
  }
  ensure_buffer(save_mean_, {channels_}, DType::f32, ctx.device);
  ensure_buffer(save_rstd_, {channels_}, DType::f32, ctx.device);
  kernels::batchnorm_forward_train(output_, save_mean_, save_rstd_, running_mean_->value, running_var_->value, input,
                                   weight_->value, bias_->value, opt_, ctx.stream);
  return output_;
}

Tensor BatchNorm2d::backward(const Tensor& grad_output, Context& ctx) {
  ensure_buffer(grad_input_, input_.shape(), ctx.dtype, ctx.device);
  kernels::batchnorm_backward(grad_input_, weight_->grad, bias_->grad, grad_output, input_, weight_->value,
                              save_mean_, save_rstd_, ctx.stream);
  return grad_input_;
}

// ---- Pool2d

Pool2d::Pool2d(Kind kind, int64_t kernel, int64_t stride, int64_t padding)
    : kind_(kind), kernel_(kernel), stride_(stride > 0 ? stride : kernel), padding_(padding) {}

Tensor Pool2d::forward(const Tensor& input, Context& ctx) {
  check_nchw(input, -1, kind());
  shape_ = {.N = input.dim(0), .C = input.dim(1), .H = input.dim(2), .W = input.dim(3), .R = kernel_, .S = kernel_,
            .stride_h = stride_, .stride_w = stride_, .pad_h = padding_, .pad_w = padding_};
  Shape out = {shape_.N, shape_.C, shape_.P(), shape_.Q()};
  ensure_buffer(output_, out, ctx.dtype, ctx.device);
  if (kind_ == Kind::max) {
    ensure_buffer(argmax_, out, DType::i32, ctx.device);
    kernels::maxpool2d_forward(output_, argmax_, input, shape_, ctx.stream);
  } else {
    kernels::avgpool2d_forward(output_, input, shape_, /*count_include_pad=*/true, ctx.stream);
  }
  return output_;
}

Tensor Pool2d::backward(const Tensor& grad_output, Context& ctx) {
  ensure_buffer(grad_input_, {shape_.N, shape_.C, shape_.H, shape_.W}, ctx.dtype, ctx.device);
  if (kind_ == Kind::max)
    kernels::maxpool2d_backward(grad_input_, grad_output, argmax_, shape_, ctx.stream);
  else
    kernels::avgpool2d_backward(grad_input_, grad_output, shape_, /*count_include_pad=*/true, ctx.stream);
  return grad_input_;
}

// ---- GlobalAvgPool

Tensor GlobalAvgPool::forward(const Tensor& input, Context& ctx) {
  check_nchw(input, -1, "GlobalAvgPool");
  input_shape_ = input.shape();
  ensure_buffer(output_, {input.dim(0), input.dim(1)}, ctx.dtype, ctx.device);
  kernels::global_avgpool_forward(output_, input, ctx.stream);
  return output_;
}

Tensor GlobalAvgPool::backward(const Tensor& grad_output, Context& ctx) {
  ensure_buffer(grad_input_, input_shape_, ctx.dtype, ctx.device);
  kernels::global_avgpool_backward(grad_input_, grad_output, ctx.stream);
  return grad_input_;
}

// ---- Reshape

Tensor Reshape::forward(const Tensor& input, Context&) {
  input_shape_ = input.shape();
  int64_t rest = input.numel() / input.dim(0), known = 1;
  for (int64_t d : dims_) known *= d > 0 ? d : 1;
  Shape shape = {input.dim(0)};
  for (int64_t d : dims_) shape.push_back(d > 0 ? d : rest / known);
  TANDEM_CHECK(shape_numel(shape) == input.numel(),
               fmt::format("Reshape: cannot view {} as {}", shape_str(input.shape()), shape_str(shape)));
  return input.reshape(shape);
}

Tensor Reshape::backward(const Tensor& grad_output, Context&) { return grad_output.reshape(input_shape_); }

}  // namespace tandem
