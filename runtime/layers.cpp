#include "runtime/layers.h"

#include <fmt/format.h>

#include <cmath>

#include "kernels/dropout.h"
#include "kernels/embedding.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/reduce.h"
#include "kernels/softmax_cross_entropy.h"

namespace tandem {

// ---- Linear

Linear::Linear(ParameterSet& params, const std::string& prefix, int64_t in_features, int64_t out_features,
               bool bias)
    : in_(in_features), out_(out_features) {
  float bound = 1.f / std::sqrt(static_cast<float>(in_features));
  weight_ = own(params.add(prefix + ".weight", {out_features, in_features}, Init::uniform(bound)));
  if (bias) bias_ = own(params.add(prefix + ".bias", {out_features}, Init::uniform(bound)));
}

Tensor Linear::forward(const Tensor& input, Context& ctx) {
  TANDEM_CHECK(input.dim(-1) == in_, "Linear expects " + std::to_string(in_) + " input features, got " +
                                         shape_str(input.shape()));
  input_ = input.reshape(rows_by_last(input));
  Shape out_shape = input.shape();
  out_shape.back() = out_;
  ensure_buffer(output_, {input_.dim(0), out_}, ctx.dtype, ctx.device);
  kernels::MatmulOptions opts;
  if (bias_) {
    opts.bias = bias_->value;
    opts.epilogue = kernels::Epilogue::bias;
  }
  kernels::matmul_forward(output_, input_, weight_->value, opts, ctx.stream);
  return output_.reshape(out_shape);
}

Tensor Linear::backward(const Tensor& grad_output, Context& ctx) {
  Tensor dout = grad_output.reshape({input_.dim(0), out_});
  ensure_buffer(grad_input_, input_.shape(), ctx.dtype, ctx.device);
  kernels::matmul_backward(grad_input_, weight_->grad, bias_ ? bias_->grad : Tensor(), dout, input_,
                           weight_->value, ctx.stream);
  Shape in_shape = grad_output.shape();
  in_shape.back() = in_;
  return grad_input_.reshape(in_shape);
}

// ---- ReLU, GELU

Tensor Activation::forward(const Tensor& input, Context& ctx) {
  input_ = input;
  ensure_buffer(output_, input.shape(), input.dtype(), ctx.device);
  kernels::activation_forward(kind_, output_, input_, ctx.stream);
  return output_;
}

Tensor Activation::backward(const Tensor& grad_output, Context& ctx) {
  ensure_buffer(grad_input_, input_.shape(), input_.dtype(), ctx.device);
  kernels::activation_backward(kind_, grad_input_, input_, grad_output, ctx.stream);
  return grad_input_;
}

// ---- LayerNorm

LayerNorm::LayerNorm(ParameterSet& params, const std::string& prefix, int64_t features, float eps)
    : features_(features), eps_(eps) {
  weight_ = own(params.add(prefix + ".weight", {features}, Init::ones()));
  bias_ = own(params.add(prefix + ".bias", {features}, Init::zeros()));
}

Tensor LayerNorm::forward(const Tensor& input, Context& ctx) {
  TANDEM_CHECK(input.dim(-1) == features_, "LayerNorm expects " + std::to_string(features_) +
                                               " features, got " + shape_str(input.shape()));
  input_ = input.reshape(rows_by_last(input));
  int64_t rows = input_.dim(0);
  ensure_buffer(output_, input_.shape(), ctx.dtype, ctx.device);
  ensure_buffer(mean_, {rows}, DType::f32, ctx.device);
  ensure_buffer(rstd_, {rows}, DType::f32, ctx.device);
  kernels::layernorm_forward(output_, mean_, rstd_, input_, weight_->value, bias_->value, {.eps = eps_},
                             ctx.stream);
  return output_.reshape(input.shape());
}

Tensor LayerNorm::backward(const Tensor& grad_output, Context& ctx) {
  ensure_buffer(grad_input_, input_.shape(), ctx.dtype, ctx.device);
  kernels::layernorm_backward(grad_input_, weight_->grad, bias_->grad, grad_output.reshape(input_.shape()),
                              input_, weight_->value, mean_, rstd_, ctx.stream);
  return grad_input_.reshape(grad_output.shape());
}

// ---- Embedding

Embedding::Embedding(ParameterSet& params, const std::string& prefix, int64_t num, int64_t dim) : dim_(dim) {
  weight_ = own(params.add(prefix + ".weight", {num, dim}, Init::normal(1.f)));
}

Tensor Embedding::forward(const Tensor& indices, Context& ctx) {
  TANDEM_CHECK(indices.dtype() == DType::i32, "Embedding takes i32 indices");
  indices_ = indices.reshape({indices.numel()});
  ensure_buffer(output_, {indices_.numel(), dim_}, ctx.dtype, ctx.device);
  kernels::embedding_forward(output_, weight_->value, indices_, ctx.stream);
  Shape out_shape = indices.shape();
  out_shape.push_back(dim_);
  return output_.reshape(out_shape);
}

Tensor Embedding::backward(const Tensor& grad_output, Context& ctx) {
  kernels::embedding_backward(weight_->grad, grad_output.reshape({indices_.numel(), dim_}), indices_,
                              ctx.stream);
  return Tensor();
}

// ---- Dropout

Dropout::Dropout(float p) : p_(p) {
  if (!(p >= 0.f && p < 1.f)) throw UserError("dropout must be in [0, 1), got " + std::to_string(p));
}

Tensor Dropout::forward(const Tensor& input, Context& ctx) {
  applied_ = ctx.training && p_ > 0.f;
  if (!applied_) return input;
  offset_ = ctx.take_rng(input.numel());
  ensure_buffer(output_, input.shape(), input.dtype(), ctx.device);
  kernels::dropout_forward(output_, input, {.p = p_, .seed = ctx.seed, .offset = offset_}, ctx.stream);
  return output_;
}

Tensor Dropout::backward(const Tensor& grad_output, Context& ctx) {
  if (!applied_) return grad_output;
  ensure_buffer(grad_input_, grad_output.shape(), grad_output.dtype(), ctx.device);
  kernels::dropout_backward(grad_input_, grad_output, {.p = p_, .seed = ctx.seed, .offset = offset_},
                            ctx.stream);
  return grad_input_;
}

// ---- Sequential

// Records [start, now] for module `index` when tracing (see runtime/trace.h).
static void trace_module(Context& ctx, const char* category, size_t index, const Module& m,
                         TraceWriter::Clock::time_point start) {
  if (!ctx.trace) return;
  ctx.stream.synchronize();  // GPU work is asynchronous: wait so the event covers it
  ctx.trace->complete(fmt::format("{}.{}", m.kind(), index), category, TraceWriter::Track::compute, start,
                      TraceWriter::Clock::now());
}

Tensor Sequential::forward(const Tensor& input, Context& ctx) {
  Tensor x = input;
  for (size_t i = 0; i < modules_.size(); i++) {
    auto start = TraceWriter::Clock::now();
    x = modules_[i]->forward(x, ctx);
    trace_module(ctx, "forward", i, *modules_[i], start);
  }
  return x;
}

Tensor Sequential::backward(const Tensor& grad_output, Context& ctx) {
  Tensor g = grad_output;
  for (size_t i = modules_.size(); i-- > 0;) {
    auto start = TraceWriter::Clock::now();
    g = modules_[i]->backward(g, ctx);
    trace_module(ctx, "backward", i, *modules_[i], start);
    if (ctx.grad_ready)
      for (const Parameter* p : modules_[i]->parameters()) ctx.grad_ready(*p);
  }
  return g;
}

// ---- CrossEntropyLoss

Tensor CrossEntropyLoss::forward(const Tensor& logits, const Tensor& targets, Context& ctx) {
  TANDEM_CHECK(logits.ndim() == 2 && targets.numel() == logits.dim(0), "CrossEntropyLoss: logits " +
                   shape_str(logits.shape()) + " and targets " + shape_str(targets.shape()));
  logits_ = logits;
  targets_ = targets;
  ensure_buffer(losses_, {logits.dim(0)}, DType::f32, ctx.device);
  kernels::softmax_cross_entropy_forward(losses_, logits_, targets_, ctx.stream);
  // The mean divides by the rows that count (target >= 0); targets are a
  // few bytes per row, so counting them on the host is cheap.
  ensure_buffer(targets_host_, {targets.numel()}, DType::i32, Device::cpu());
  targets_host_.copy_from(targets, ctx.stream);
  const int32_t* t = targets_host_.data_as<int32_t>();
  num_valid_ = 0;
  for (int64_t i = 0; i < targets.numel(); i++) num_valid_ += t[i] >= 0;
  return losses_;
}

Tensor CrossEntropyLoss::backward(Context& ctx, float scale) {
  float dloss = num_valid_ > 0 ? scale / static_cast<float>(num_valid_) : 0.f;
  kernels::softmax_cross_entropy_backward(logits_, logits_, targets_, dloss, ctx.stream);
  return logits_;
}

double CrossEntropyLoss::mean(Context& ctx) {
  if (num_valid_ == 0) return 0.0;
  ensure_buffer(total_, {1}, DType::f32, ctx.device);
  if (ctx.device.is_cuda()) ensure_buffer(scratch_, {kernels::kReduceScratchElems}, DType::f32, ctx.device);
  kernels::sum(total_, losses_, scratch_, ctx.stream);
  ctx.stream.synchronize();
  return total_.to_vector()[0] / static_cast<double>(num_valid_);
}

}  // namespace tandem
