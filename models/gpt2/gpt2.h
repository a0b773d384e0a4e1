// GPT-2 (Radford et al. 2019), as Hugging Face's GPT2LMHeadModel computes
// it: learned token and position embeddings, pre-LayerNorm blocks of causal
// multi-head attention and a 4x GELU (tanh) MLP, a final LayerNorm, and an
// LM head tied to the token embedding. No dropout (llm.c's choice).
//
// Forward and backward are written out layer by layer over the kernels, as
// in llm.c: no autograd, each layer's activations kept for its backward.
// Parameter names and file layouts are transformers' (Conv1D weights are
// (in, out) in files; in memory they are (out, in) for our matmul), so a
// checkpoint's model.safetensors loads in GPT2LMHeadModel.
#pragma once

#include <nlohmann/json.hpp>
#include <toml++/toml.h>
#include <vector>

#include "runtime/module.h"
#include "runtime/parameters.h"

namespace tandem::models {

// Hugging Face's GPT2Config names.
struct Gpt2Config {
  int64_t vocab_size = 50257;
  int64_t n_positions = 1024;  // the longest sequence (rows of the position table)
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_embd = 768;
  float layer_norm_epsilon = 1e-5f;
};

// Reads the [gpt2] table of a training config; `where` names it in errors.
Gpt2Config parse_gpt2_config(const toml::table& table, const std::string& where);

// transformers' config.json for GPT2LMHeadModel, and back.
nlohmann::json to_hf_config(const Gpt2Config& config);
Gpt2Config from_hf_config(const nlohmann::json& json, const std::string& where);

// Parameters in the model (the tied LM head counted once).
int64_t gpt2_num_parameters(const Gpt2Config& config);
// Training FLOPs per token (forward + backward) at sequence length T: 6 per
// parameter plus 12 * n_layer * n_embd * T for the attention (PaLM's
// accounting, as nanoGPT's MFU).
double gpt2_flops_per_token(const Gpt2Config& config, int64_t seq_len);

class Gpt2 : public Module {
 public:
  explicit Gpt2(const Gpt2Config& config);

  // tokens (B, T) i32, T <= n_positions -> logits (B, T, vocab_size).
  Tensor forward(const Tensor& tokens, Context& ctx) override;
  // dlogits (B, T, vocab_size) or (B*T, vocab_size); accumulates every
  // parameter's gradient; returns an undefined tensor (tokens have none).
  Tensor backward(const Tensor& dlogits, Context& ctx) override;
  const char* kind() const override { return "GPT2"; }

  const Gpt2Config& config() const { return config_; }
  ParameterSet params;

 private:
  struct Block {
    Parameter *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b;
    Parameter *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
    // Forward activations, kept for the backward. x: the residual stream
    // into the block; mid: after the attention's residual add.
    Tensor x, ln1, ln1_mean, ln1_rstd, qkv, atty, lse, mid, ln2, ln2_mean, ln2_rstd, fc_pre, fc;
  };

  // out: the residual stream after the block (the next block's x).
  void block_forward(Block& b, Tensor& out, Context& ctx);
  // dx: the gradient of the block's output on entry, of its input on return.
  void block_backward(Block& b, Tensor& dx, Context& ctx);
  void allocate_activations(int64_t B, int64_t T, Context& ctx);
  void ready(Context& ctx, std::initializer_list<const Parameter*> done) const;

  Gpt2Config config_;
  Parameter *wte_, *wpe_, *lnf_w_, *lnf_b_;
  std::vector<Block> blocks_;
  // Whole-model buffers: the tokens, the residual stream after the last
  // block, ln_f's output and statistics, the logits; scratch (dtmp_ holds
  // the projections' output in the forward), and the backward's gradients.
  Tensor tokens_, x_out_, lnf_, lnf_mean_, lnf_rstd_, logits_;
  Tensor dtmp_, dx_, dln_, dqkv_, datty_, dfc_;
};

}  // namespace tandem::models
