#include "models/gpt2/gpt2.h"

#include <fmt/format.h>

#include <cmath>

#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/encoder.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/residual.h"
#include "runtime/config.h"
#include "runtime/core/error.h"

namespace tandem::models {

namespace {

void check_config(const Gpt2Config& c, const std::string& where) {
  if (c.n_embd % c.n_head != 0)
    throw UserError(fmt::format("{}: n_embd {} is not a multiple of n_head {}", where, c.n_embd, c.n_head));
  if (c.vocab_size > 65536)
    throw UserError(fmt::format("{}: vocab_size {} does not fit the uint16 token files (at most 65536)", where,
                                c.vocab_size));
}

}  // namespace

Gpt2Config parse_gpt2_config(const toml::table& table, const std::string& where) {
  check_keys(table, {"vocab_size", "n_positions", "n_layer", "n_head", "n_embd"}, where + " [gpt2]");
  Gpt2Config c;
  c.vocab_size = read_positive_int(table, "gpt2", "vocab_size", where, c.vocab_size);
  c.n_positions = read_positive_int(table, "gpt2", "n_positions", where, c.n_positions);
  c.n_layer = read_positive_int(table, "gpt2", "n_layer", where, c.n_layer);
  c.n_head = read_positive_int(table, "gpt2", "n_head", where, c.n_head);
  c.n_embd = read_positive_int(table, "gpt2", "n_embd", where, c.n_embd);
  check_config(c, where);
  return c;
}

nlohmann::json to_hf_config(const Gpt2Config& c) {
  // GPT-2's <|endoftext|> is token 50256 of its BPE vocabulary; a byte-level
  // model has no such token.
  nlohmann::json end_of_text = c.vocab_size == 50257 ? nlohmann::json(50256) : nlohmann::json(nullptr);
  return {{"architectures", {"GPT2LMHeadModel"}},
          {"bos_token_id", end_of_text},
          {"eos_token_id", end_of_text},
          {"model_type", "gpt2"},
          {"vocab_size", c.vocab_size},
          {"n_positions", c.n_positions},
          {"n_ctx", c.n_positions},
          {"n_embd", c.n_embd},
          {"n_layer", c.n_layer},
          {"n_head", c.n_head},
          {"n_inner", nullptr},
          {"activation_function", "gelu_new"},  // the tanh approximation, as ours
          {"resid_pdrop", 0.0},
          {"embd_pdrop", 0.0},
          {"attn_pdrop", 0.0},
          {"layer_norm_epsilon", c.layer_norm_epsilon},
          {"initializer_range", 0.02},
          {"tie_word_embeddings", true},
          {"scale_attn_weights", true},
          {"torch_dtype", "float32"}};
}

Gpt2Config from_hf_config(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object() || j.value("model_type", "") != "gpt2")
    throw UserError(fmt::format("{} is not a GPT-2 config (model_type is not \"gpt2\")", where));
  auto get = [&](const char* key, int64_t fallback) {
    const auto it = j.find(key);
    if (it == j.end()) return fallback;
    if (!it->is_number_integer() || it->get<int64_t>() <= 0)
      throw UserError(fmt::format("{}: {} must be a positive integer", where, key));
    return it->get<int64_t>();
  };
  Gpt2Config c;
  c.vocab_size = get("vocab_size", c.vocab_size);
  c.n_positions = get("n_positions", c.n_positions);
  c.n_layer = get("n_layer", c.n_layer);
  c.n_head = get("n_head", c.n_head);
  c.n_embd = get("n_embd", c.n_embd);
  c.layer_norm_epsilon = j.value("layer_norm_epsilon", c.layer_norm_epsilon);
  const auto inner = j.find("n_inner");
  if (inner != j.end() && !inner->is_null() && inner->get<int64_t>() != 4 * c.n_embd)
    throw UserError(fmt::format("{}: n_inner {} is not 4 * n_embd; only GPT-2's 4x MLP is supported", where,
                                inner->dump()));
  std::string act = j.value("activation_function", "gelu_new");
  if (act != "gelu_new" && act != "gelu_pytorch_tanh")
    throw UserError(fmt::format("{}: activation_function '{}' is not supported (GPT-2 uses gelu_new)", where, act));
  if (!j.value("tie_word_embeddings", true))
    throw UserError(fmt::format("{}: untied word embeddings are not supported", where));
  check_config(c, where);
  return c;
}

int64_t gpt2_num_parameters(const Gpt2Config& c) {
  int64_t C = c.n_embd;
  return c.vocab_size * C + c.n_positions * C + c.n_layer * (12 * C * C + 13 * C) + 2 * C;
}

double gpt2_flops_per_token(const Gpt2Config& c, int64_t seq_len) {
  return 6.0 * static_cast<double>(gpt2_num_parameters(c)) +
         12.0 * static_cast<double>(c.n_layer * c.n_embd * seq_len);
}

Gpt2::Gpt2(const Gpt2Config& config) : config_(config) {
  int64_t C = config.n_embd, V = config.vocab_size;
  // transformers' _init_weights: N(0, 0.02), the residual projections
  // scaled by 1/sqrt(2 * n_layer); biases 0; LayerNorm 1 and 0.
  float std = 0.02f, proj_std = 0.02f / std::sqrt(2.f * static_cast<float>(config.n_layer));
  wte_ = params.add("transformer.wte.weight", {V, C}, Init::normal(std));
  wpe_ = params.add("transformer.wpe.weight", {config.n_positions, C}, Init::normal(std));
  blocks_.resize(config.n_layer);
  for (int64_t l = 0; l < config.n_layer; l++) {
    Block& b = blocks_[l];
    std::string h = fmt::format("transformer.h.{}.", l);
    b.ln1_w = params.add(h + "ln_1.weight", {C}, Init::ones());
    b.ln1_b = params.add(h + "ln_1.bias", {C}, Init::zeros());
    b.qkv_w = params.add(h + "attn.c_attn.weight", {3 * C, C}, Init::normal(std), /*transposed_in_file=*/true);
    b.qkv_b = params.add(h + "attn.c_attn.bias", {3 * C}, Init::zeros());
    b.proj_w = params.add(h + "attn.c_proj.weight", {C, C}, Init::normal(proj_std), true);
    b.proj_b = params.add(h + "attn.c_proj.bias", {C}, Init::zeros());
    b.ln2_w = params.add(h + "ln_2.weight", {C}, Init::ones());
    b.ln2_b = params.add(h + "ln_2.bias", {C}, Init::zeros());
    b.fc_w = params.add(h + "mlp.c_fc.weight", {4 * C, C}, Init::normal(std), true);
    b.fc_b = params.add(h + "mlp.c_fc.bias", {4 * C}, Init::zeros());
    b.fcproj_w = params.add(h + "mlp.c_proj.weight", {C, 4 * C}, Init::normal(proj_std), true);
    b.fcproj_b = params.add(h + "mlp.c_proj.bias", {C}, Init::zeros());
  }
  lnf_w_ = params.add("transformer.ln_f.weight", {C}, Init::ones());
  lnf_b_ = params.add("transformer.ln_f.bias", {C}, Init::zeros());
}

void Gpt2::allocate_activations(int64_t B, int64_t T, Context& ctx) {
  int64_t N = B * T, C = config_.n_embd, NH = config_.n_head;
  DType dt = ctx.dtype, f32 = DType::f32;
  Device dev = ctx.device;
  for (Block& b : blocks_) {
    ensure_buffer(b.x, {N, C}, dt, dev);
    ensure_buffer(b.ln1, {N, C}, dt, dev);
    ensure_buffer(b.ln1_mean, {N}, f32, dev);
    ensure_buffer(b.ln1_rstd, {N}, f32, dev);
    ensure_buffer(b.qkv, {B, T, 3 * C}, dt, dev);
    ensure_buffer(b.atty, {B, T, C}, dt, dev);
    ensure_buffer(b.lse, {B, NH, T}, f32, dev);
    ensure_buffer(b.mid, {N, C}, dt, dev);
    ensure_buffer(b.ln2, {N, C}, dt, dev);
    ensure_buffer(b.ln2_mean, {N}, f32, dev);
    ensure_buffer(b.ln2_rstd, {N}, f32, dev);
    ensure_buffer(b.fc_pre, {N, 4 * C}, dt, dev);
    ensure_buffer(b.fc, {N, 4 * C}, dt, dev);
  }
  ensure_buffer(x_out_, {N, C}, dt, dev);
  ensure_buffer(lnf_, {N, C}, dt, dev);
  ensure_buffer(lnf_mean_, {N}, f32, dev);
  ensure_buffer(lnf_rstd_, {N}, f32, dev);
  ensure_buffer(logits_, {N, config_.vocab_size}, dt, dev);
  ensure_buffer(dtmp_, {N, C}, dt, dev);  // forward: the projections' output; backward: LayerNorm's dinp
}

Tensor Gpt2::forward(const Tensor& tokens, Context& ctx) {
  TANDEM_CHECK(tokens.ndim() == 2 && tokens.dtype() == DType::i32,
               "GPT2 expects (B, T) i32 tokens, got " + shape_str(tokens.shape()));
  int64_t B = tokens.dim(0), T = tokens.dim(1), C = config_.n_embd;
  if (T > config_.n_positions)
    throw UserError(fmt::format("a sequence of {} tokens is longer than the model's n_positions {}", T,
                                config_.n_positions));
  allocate_activations(B, T, ctx);
  tokens_ = tokens;
  kernels::encoder_forward(blocks_.empty() ? x_out_.reshape({B, T, C}) : blocks_[0].x.reshape({B, T, C}), tokens,
                           wte_->value, wpe_->value, ctx.stream);
  for (size_t l = 0; l < blocks_.size(); l++)
    block_forward(blocks_[l], l + 1 < blocks_.size() ? blocks_[l + 1].x : x_out_, ctx);
  kernels::layernorm_forward(lnf_, lnf_mean_, lnf_rstd_, x_out_, lnf_w_->value, lnf_b_->value,
                             {config_.layer_norm_epsilon}, ctx.stream);
  kernels::matmul_forward(logits_, lnf_, wte_->value, {}, ctx.stream);  // the LM head, tied to wte
  return logits_.reshape({B, T, config_.vocab_size});
}

void Gpt2::block_forward(Block& b, Tensor& out, Context& ctx) {
  kernels::LayerNormOptions ln{config_.layer_norm_epsilon};
  const Tensor& x = b.x;
  Tensor& proj = dtmp_;
  kernels::layernorm_forward(b.ln1, b.ln1_mean, b.ln1_rstd, x, b.ln1_w->value, b.ln1_b->value, ln, ctx.stream);
  kernels::matmul_forward(b.qkv, b.ln1, b.qkv_w->value, {b.qkv_b->value, kernels::Epilogue::bias}, ctx.stream);
  kernels::attention_forward(b.atty, b.lse, b.qkv, config_.n_head, ctx.stream);
  kernels::matmul_forward(proj, b.atty, b.proj_w->value, {b.proj_b->value, kernels::Epilogue::bias}, ctx.stream);
  kernels::residual_layernorm_forward(b.mid, b.ln2, b.ln2_mean, b.ln2_rstd, x, proj, b.ln2_w->value,
                                      b.ln2_b->value, ln, ctx.stream);
  kernels::matmul_forward(b.fc, b.ln2, b.fc_w->value, {b.fc_b->value, kernels::Epilogue::gelu_bias, b.fc_pre},
                          ctx.stream);
  kernels::matmul_forward(proj, b.fc, b.fcproj_w->value, {b.fcproj_b->value, kernels::Epilogue::bias}, ctx.stream);
  kernels::residual_add(out, b.mid, proj, ctx.stream);
}

Tensor Gpt2::backward(const Tensor& dlogits, Context& ctx) {
  int64_t N = lnf_.dim(0), C = config_.n_embd, V = config_.vocab_size;
  TANDEM_CHECK(dlogits.numel() == N * V, "GPT2 backward: dlogits " + shape_str(dlogits.shape()) +
                                             " does not match the forward's logits");
  ensure_buffer(dx_, {N, C}, ctx.dtype, ctx.device);
  ensure_buffer(dln_, {N, C}, ctx.dtype, ctx.device);
  ensure_buffer(dfc_, {N, 4 * C}, ctx.dtype, ctx.device);
  ensure_buffer(datty_, blocks_.empty() ? Shape{N, C} : blocks_[0].atty.shape(), ctx.dtype, ctx.device);
  ensure_buffer(dqkv_, blocks_.empty() ? Shape{N, 3 * C} : blocks_[0].qkv.shape(), ctx.dtype, ctx.device);

  kernels::matmul_backward(dln_, wte_->grad, Tensor(), dlogits.reshape({N, V}), lnf_, wte_->value, ctx.stream);
  kernels::layernorm_backward(dx_, lnf_w_->grad, lnf_b_->grad, dln_, x_out_, lnf_w_->value, lnf_mean_, lnf_rstd_,
                              ctx.stream);
  ready(ctx, {lnf_w_, lnf_b_});
  for (size_t l = blocks_.size(); l-- > 0;) {
    Block& b = blocks_[l];
    block_backward(b, dx_, ctx);
    ready(ctx, {b.ln1_w, b.ln1_b, b.qkv_w, b.qkv_b, b.proj_w, b.proj_b, b.ln2_w, b.ln2_b, b.fc_w, b.fc_b,
                b.fcproj_w, b.fcproj_b});
  }
  int64_t B = tokens_.dim(0), T = tokens_.dim(1);
  kernels::encoder_backward(wte_->grad, wpe_->grad, dx_.reshape({B, T, C}), tokens_, ctx.stream);
  ready(ctx, {wte_, wpe_});
  return Tensor();
}

void Gpt2::block_backward(Block& b, Tensor& dx, Context& ctx) {
  // out = mid + c_proj(gelu(c_fc(ln_2(mid)))): dx flows to mid unchanged, plus through the MLP.
  kernels::matmul_backward(dfc_, b.fcproj_w->grad, b.fcproj_b->grad, dx, b.fc, b.fcproj_w->value, ctx.stream);
  kernels::activation_backward(kernels::Activation::gelu, dfc_, b.fc_pre, dfc_, ctx.stream);
  kernels::matmul_backward(dln_, b.fc_w->grad, b.fc_b->grad, dfc_, b.ln2, b.fc_w->value, ctx.stream);
  kernels::layernorm_backward(dtmp_, b.ln2_w->grad, b.ln2_b->grad, dln_, b.mid, b.ln2_w->value, b.ln2_mean,
                              b.ln2_rstd, ctx.stream);
  kernels::residual_add(dx, dx, dtmp_, ctx.stream);
  // mid = x + c_proj(attn(c_attn(ln_1(x)))).
  kernels::matmul_backward(datty_, b.proj_w->grad, b.proj_b->grad, dx, b.atty, b.proj_w->value, ctx.stream);
  kernels::attention_backward(dqkv_, datty_, b.qkv, b.atty, b.lse, config_.n_head, ctx.stream);
  kernels::matmul_backward(dln_, b.qkv_w->grad, b.qkv_b->grad, dqkv_, b.ln1, b.qkv_w->value, ctx.stream);
  kernels::layernorm_backward(dtmp_, b.ln1_w->grad, b.ln1_b->grad, dln_, b.x, b.ln1_w->value, b.ln1_mean,
                              b.ln1_rstd, ctx.stream);
  kernels::residual_add(dx, dx, dtmp_, ctx.stream);
}

// Tells the data-parallel reducer that these gradients are final.
void Gpt2::ready(Context& ctx, std::initializer_list<const Parameter*> done) const {
  if (!ctx.grad_ready) return;
  for (const Parameter* p : done) ctx.grad_ready(*p);
}

}  // namespace tandem::models
