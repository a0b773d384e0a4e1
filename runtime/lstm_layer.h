// A multi-layer LSTM module over batch-first sequences, as PyTorch's
// nn.LSTM(input_size, hidden_size, num_layers, batch_first=True): (B, T, I)
// -> (B, T, H), zero initial state, the top layer's h at every step out.
// Parameter names and initialisation are PyTorch's: weight_ih_l{k}
// (4H, I or H), weight_hh_l{k} (4H, H), bias_ih_l{k}, bias_hh_l{k} (4H),
// all U(-1/sqrt(H), 1/sqrt(H)); gate order i, f, g, o.
//
// The kernels (kernels/lstm.h) run sequence-first (T, N, I), as cuDNN does;
// the module transposes at its two ends (kernels::lstm_swap_leading), on
// the CPU or on CUDA.
#pragma once

#include "kernels/lstm.h"
#include "runtime/module.h"

namespace tandem {

class Lstm : public Module {
 public:
  Lstm(ParameterSet& params, const std::string& prefix, int64_t input_size, int64_t hidden_size, int64_t num_layers);
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return "LSTM"; }

 private:
  struct Layer {
    Parameter *w_ih, *w_hh, *b_ih, *b_hh;
    // The layer's output (T, B, H), what its backward needs, and its
    // input's gradient (the output gradient of the layer below).
    Tensor y, reserve, dx;
  };
  kernels::LstmShape shape(size_t l) const;
  // Layer l's input (T, B, .): the transposed module input, or the layer below's output.
  const Tensor& layer_input(size_t l) const { return l == 0 ? x_ : layers_[l - 1].y; }

  int64_t input_size_, hidden_;
  int64_t B_ = 0, T_ = 0;
  std::vector<Layer> layers_;
  Tensor x_, workspace_, dy_, output_, grad_input_;
};

}  // namespace tandem
