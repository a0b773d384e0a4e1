#include "runtime/lstm_layer.h"

#include <fmt/format.h>

#include <cmath>

namespace tandem {

Lstm::Lstm(ParameterSet& params, const std::string& prefix, int64_t input_size, int64_t hidden_size,
           int64_t num_layers)
    : input_size_(input_size), hidden_(hidden_size) {
  TANDEM_CHECK(input_size > 0 && hidden_size > 0 && num_layers > 0, "LSTM sizes must be positive");
  Init init = Init::uniform(1.f / std::sqrt(static_cast<float>(hidden_size)));
  for (int64_t l = 0; l < num_layers; l++) {
    int64_t in = l == 0 ? input_size : hidden_size;
    Layer layer;
    layer.w_ih = own(params.add(fmt::format("{}.weight_ih_l{}", prefix, l), {4 * hidden_size, in}, init));
    layer.w_hh = own(params.add(fmt::format("{}.weight_hh_l{}", prefix, l), {4 * hidden_size, hidden_size}, init));
    layer.b_ih = own(params.add(fmt::format("{}.bias_ih_l{}", prefix, l), {4 * hidden_size}, init));
    layer.b_hh = own(params.add(fmt::format("{}.bias_hh_l{}", prefix, l), {4 * hidden_size}, init));
    layers_.push_back(layer);
  }
}

kernels::LstmShape Lstm::shape(size_t l) const {
  return {.T = T_, .N = B_, .I = l == 0 ? input_size_ : hidden_, .H = hidden_};
}

Tensor Lstm::forward(const Tensor& input, Context& ctx) {
  TANDEM_CHECK(input.ndim() == 3 && input.dim(2) == input_size_,
               fmt::format("LSTM expects (B, T, {}) input, got {}", input_size_, shape_str(input.shape())));
  B_ = input.dim(0);
  T_ = input.dim(1);
  int64_t workspace = 0;
  for (size_t l = 0; l < layers_.size(); l++) {
    Layer& layer = layers_[l];
    kernels::LstmShape s = shape(l);
    ensure_buffer(layer.y, {T_, B_, hidden_}, ctx.dtype, ctx.device);
    // The reserve and workspace are opaque f32 scratch, sized for the device.
    ensure_buffer(layer.reserve, {kernels::lstm_reserve_elems(s, ctx.dtype, ctx.device)}, DType::f32, ctx.device);
    workspace = std::max(workspace, kernels::lstm_workspace_elems(s, ctx.dtype, ctx.device));
  }
  ensure_buffer(workspace_, {workspace}, DType::f32, ctx.device);
  ensure_buffer(x_, {T_, B_, input_size_}, ctx.dtype, ctx.device);
  kernels::lstm_swap_leading(x_, input, ctx.stream);
  for (size_t l = 0; l < layers_.size(); l++) {
    Layer& layer = layers_[l];
    kernels::lstm_forward(layer.y, {}, layer.reserve, layer_input(l), {},
                          {layer.w_ih->value, layer.w_hh->value, layer.b_ih->value, layer.b_hh->value},
                          shape(l), workspace_, ctx.stream);
  }
  ensure_buffer(output_, {B_, T_, hidden_}, ctx.dtype, ctx.device);
  kernels::lstm_swap_leading(output_, layers_.back().y, ctx.stream);
  return output_;
}

Tensor Lstm::backward(const Tensor& grad_output, Context& ctx) {
  ensure_buffer(dy_, {T_, B_, hidden_}, ctx.dtype, ctx.device);
  // The layer above may hand the gradient over flattened, (B*T, H).
  TANDEM_CHECK(grad_output.numel() == B_ * T_ * hidden_,
               fmt::format("LSTM backward expects a gradient of (B, T, {}) = {} values, got {}", hidden_,
                           B_ * T_ * hidden_, shape_str(grad_output.shape())));
  kernels::lstm_swap_leading(dy_, grad_output.reshape({B_, T_, hidden_}), ctx.stream);
  for (size_t l = layers_.size(); l-- > 0;) {
    Layer& layer = layers_[l];
    kernels::LstmShape s = shape(l);
    ensure_buffer(layer.dx, {T_, B_, s.I}, ctx.dtype, ctx.device);
    const Tensor& dy = l + 1 < layers_.size() ? layers_[l + 1].dx : dy_;
    kernels::lstm_backward(layer.dx, {}, {layer.w_ih->grad, layer.w_hh->grad, layer.b_ih->grad, layer.b_hh->grad}, dy,
                           {}, layer_input(l), {}, {layer.w_ih->value, layer.w_hh->value, Tensor(), Tensor()}, layer.y,
                           layer.reserve, s, workspace_, ctx.stream);
  }
  ensure_buffer(grad_input_, {B_, T_, input_size_}, ctx.dtype, ctx.device);
  kernels::lstm_swap_leading(grad_input_, layers_[0].dx, ctx.stream);
  return grad_input_;
}

}  // namespace tandem
