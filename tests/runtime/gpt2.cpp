// GPT-2 (models/gpt2) against a float64 GPT-2 written the plain way from the
// safetensors file (tests/support/gpt2_reference.h): the loss, every
// parameter's gradient by finite differences, the evaluation over a token
// file, and the Hugging Face directory format both ways.
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "models/gpt2/hf_checkpoint.h"
#include "runtime/layers.h"
#include "runtime/lm_task.h"
#include "runtime/token_file.h"
#include "support/gpt2_reference.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

namespace {

// Small, with odd sizes: T < n_positions, V not a power of two.
models::Gpt2Config small_config() { return {.vocab_size = 13, .n_positions = 9, .n_layer = 2, .n_head = 2, .n_embd = 10}; }

// Random weights far from the 0.02-scale init, so every path carries signal
// (LayerNorm gains around 1).
void randomize(models::Gpt2& model, uint64_t seed) {
  std::vector<float> v = random_vector(model.params.numel(), seed, -0.5f, 0.5f);
  for (const Parameter& p : model.params.list())
    if (p.name.find("ln_") != std::string::npos && p.name.ends_with(".weight"))
      for (int64_t i = 0; i < p.numel(); i++) v[p.offset + i] += 1.f;
  model.params.allocate(Device::cpu(), DType::f32, Tensor::from_vector(v, {model.params.numel()}));
}

// config.json and model.safetensors as a checkpoint holds them. `prefix`
// false writes the Hub's names (no "transformer.") plus a separate lm_head.
void write_hf_dir(const models::Gpt2& model, const fs::path& dir, bool prefix = true) {
  std::ofstream(dir / "config.json") << models::to_hf_config(model.config()).dump(2);
  std::vector<NamedTensor> tensors;
  for (const Parameter& p : model.params.list()) {
    std::string name = prefix ? p.name : p.name.substr(std::string("transformer.").size());
    tensors.push_back({name, to_file_layout(p, p.value)});
  }
  if (!prefix) tensors.push_back({"lm_head.weight", model.params.find("transformer.wte.weight").value});
  write_safetensors((dir / "model.safetensors").string(), tensors);
}

// Every parameter's values (the flat buffer's alignment padding left out).
std::vector<std::vector<float>> parameter_values(const models::Gpt2& model) {
  std::vector<std::vector<float>> out;
  for (const Parameter& p : model.params.list()) out.push_back(p.value.to_vector());
  return out;
}

Context cpu_context() {
  Context ctx;
  ctx.stream = Stream::create(Device::cpu());
  return ctx;
}

// The model's mean loss on (inputs, targets), with its gradients accumulated when `backward`.
double model_loss(models::Gpt2& model, const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets,
                  int64_t B, int64_t T, bool backward) {
  Context ctx = cpu_context();
  CrossEntropyLoss loss_fn;
  Tensor tokens = make_int_tensor(inputs, {B, T});
  Tensor logits = model.forward(tokens, ctx);
  loss_fn.forward(logits.reshape({B * T, model.config().vocab_size}), make_int_tensor(targets, {B * T}), ctx);
  if (backward) model.backward(loss_fn.backward(ctx), ctx);
  return loss_fn.mean(ctx);
}

}  // namespace

TEST_CASE("gpt2 loss and gradients match float64 GPT-2 from the safetensors file", "[gpt2]") {
  uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  models::Gpt2 model(small_config());
  randomize(model, seed);
  fs::path dir = temp_dir("ref");
  write_hf_dir(model, dir);
  Gpt2Reference ref(dir.string());

  const int64_t B = 2, T = 7, V = model.config().vocab_size;
  std::vector<int32_t> inputs = random_indices(B * T, V, Spread::uniform, seed + 1);
  std::vector<int32_t> targets = random_indices(B * T, V, Spread::uniform, seed + 2);
  double loss = model_loss(model, inputs, targets, B, T, /*backward=*/true);
  double want = ref.loss(inputs, targets, B, T);
  REQUIRE(std::fabs(loss - want) <= 1e-5 * std::max(1.0, std::fabs(want)));

  // Each parameter's gradient against central differences of the float64 loss.
  int checked = 0;
  for (const Parameter& p : model.params.list()) {
    std::string key = p.name.substr(std::string("transformer.").size());
    std::vector<float> grad = p.grad.to_vector();
    for (int64_t i : {int64_t{0}, p.numel() / 2, p.numel() - 1}) {
      // The file holds Conv1D weights transposed: (o, c) in memory is (c, o) there.
      int64_t file_i = p.transposed_in_file ? (i % p.shape[1]) * p.shape[0] + i / p.shape[1] : i;
      double& w = ref.w.at(key)[file_i];
      double saved = w, h = 1e-6;
      w = saved + h;
      double up = ref.loss(inputs, targets, B, T);
      w = saved - h;
      double down = ref.loss(inputs, targets, B, T);
      w = saved;
      double fd = (up - down) / (2 * h);
      INFO(p.name << "[" << i << "]: analytic " << grad[i] << ", finite difference " << fd);
      CHECK(std::fabs(grad[i] - fd) <= 2e-5 + 2e-3 * std::fabs(fd));
      checked++;
    }
  }
  REQUIRE(checked == 3 * static_cast<int>(model.params.list().size()));
  fs::remove_all(dir);
}

TEST_CASE("gpt2 evaluation over a token file matches float64 GPT-2 (tandem eval's path)", "[gpt2]") {
  uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  models::Gpt2 model(small_config());
  randomize(model, seed);
  fs::path dir = temp_dir("eval");
  write_hf_dir(model, dir);

  const int64_t B = 3, T = 5, batches = 4, V = model.config().vocab_size;
  std::vector<int32_t> stream = random_indices(B * T * batches + 1, V, Spread::uniform, seed + 1);
  write_token_file((dir / "val.bin").string(), std::vector<uint16_t>(stream.begin(), stream.end()));

  std::unique_ptr<models::Gpt2> loaded = models::load_gpt2(dir.string(), Device::cpu(), DType::f32);
  TokenLoader loader({(dir / "val.bin").string()}, {.batch_size = B, .seq_len = T});
  Context ctx = cpu_context();
  double loss = mean_token_loss(*loaded, loader, 0, ctx);

  double want = Gpt2Reference(dir.string()).stream_loss(stream, B, T, batches);
  REQUIRE(std::fabs(loss - want) <= 1e-5 * std::max(1.0, want));
  fs::remove_all(dir);
}

TEST_CASE("gpt2 reads the Hub's names and refuses a directory that does not fit", "[gpt2]") {
  uint64_t seed = fresh_seed();
  models::Gpt2 model(small_config());
  randomize(model, seed);
  fs::path hub = temp_dir("hub"), ours = temp_dir("ours");
  write_hf_dir(model, hub, /*prefix=*/false);
  write_hf_dir(model, ours);
  std::unique_ptr<models::Gpt2> a = models::load_gpt2(hub.string(), Device::cpu(), DType::f32);
  std::unique_ptr<models::Gpt2> b = models::load_gpt2(ours.string(), Device::cpu(), DType::f32);
  REQUIRE(parameter_values(*a) == parameter_values(model));
  REQUIRE(parameter_values(*b) == parameter_values(model));

  // Another architecture: the config says 3 layers, the weights hold 2.
  models::Gpt2Config deeper = small_config();
  deeper.n_layer = 3;
  std::ofstream(ours / "config.json") << models::to_hf_config(deeper).dump();
  REQUIRE_THROWS_WITH(models::load_gpt2(ours.string(), Device::cpu(), DType::f32),
                      Catch::Contains("no tensor 'transformer.h.2.ln_1.weight'"));
  fs::remove(ours / "config.json");
  REQUIRE_THROWS_WITH(models::load_gpt2(ours.string(), Device::cpu(), DType::f32),
                      Catch::Contains("has no config.json"));
  fs::remove_all(hub);
  fs::remove_all(ours);
}

TEST_CASE("gpt2 configs: Hugging Face's config.json round-trips; bad ones are clear errors", "[gpt2]") {
  models::Gpt2Config c = small_config();
  models::Gpt2Config back = models::from_hf_config(models::to_hf_config(c), "test");
  REQUIRE(back.vocab_size == c.vocab_size);
  REQUIRE(back.n_positions == c.n_positions);
  REQUIRE(back.n_layer == c.n_layer);
  REQUIRE(back.n_head == c.n_head);
  REQUIRE(back.n_embd == c.n_embd);

  nlohmann::json bad = models::to_hf_config(c);
  bad["n_head"] = 3;
  REQUIRE_THROWS_WITH(models::from_hf_config(bad, "cfg"), Catch::Contains("not a multiple of n_head"));
  bad = models::to_hf_config(c);
  bad["model_type"] = "llama";
  REQUIRE_THROWS_WITH(models::from_hf_config(bad, "cfg"), Catch::Contains("not a GPT-2 config"));
  bad = models::to_hf_config(c);
  bad["activation_function"] = "relu";
  REQUIRE_THROWS_WITH(models::from_hf_config(bad, "cfg"), Catch::Contains("not supported"));

  toml::table table = toml::parse("n_layer = 2\nn_heads = 4\n");
  REQUIRE_THROWS_WITH(models::parse_gpt2_config(table, "tiny.toml"), Catch::Contains("unknown config key 'n_heads'"));
  table = toml::parse("n_layer = 0\n");
  REQUIRE_THROWS_WITH(models::parse_gpt2_config(table, "tiny.toml"), Catch::Contains("positive integer"));

  // GPT-2 small's published size: 124,439,808 parameters.
  REQUIRE(models::gpt2_num_parameters(models::Gpt2Config{}) == 124439808);
}

TEST_CASE("gpt2 refuses sequences longer than n_positions", "[gpt2]") {
  models::Gpt2 model(small_config());
  model.params.allocate(Device::cpu(), DType::f32, 1);
  Context ctx = cpu_context();
  Tensor tokens = make_int_tensor(std::vector<int32_t>(10, 1), {1, 10});
  REQUIRE_THROWS_WITH(model.forward(tokens, ctx), Catch::Contains("longer than the model's n_positions 9"));
}
