// tandem eval:     the mean next-token loss of a language model checkpoint on
//                  a token file, or an image classifier's loss and accuracy
//                  on its test set.
// tandem generate: text sampled from a byte-level language model checkpoint.
// --checkpoint takes a GPT-2 Hugging Face directory (config.json +
// model.safetensors: one of tandem's step directories, or transformers'
// save_pretrained output), a tandem step directory of another model (the
// lstm, mlp, cnn or resnet: its config is in the manifest), or a checkpoint
// directory, whose newest valid step is used.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "models/gpt2/hf_checkpoint.h"
#include "models/lstm/lstm.h"
#include "runtime/checkpoint.h"
#include "runtime/byte_tokenizer.h"
#include "runtime/classifier_task.h"
#include "runtime/core/philox.h"
#include "runtime/lm_task.h"
#include "runtime/resume.h"
#include "tools/commands.h"
#include "tools/image_models.h"

namespace tandem::tools {

namespace {

namespace fs = std::filesystem;

struct ModelArgs {
  std::string checkpoint;
  std::string device = "cpu";
  std::string dtype = "f32";
};

void add_model_options(CLI::App* cmd, ModelArgs& args) {
  cmd->add_option("--checkpoint", args.checkpoint, "A GPT-2 directory (config.json + model.safetensors), a step "
                                                    "directory, or a checkpoint directory (its newest valid step)")
      ->required();
  cmd->add_option("--device", args.device, "cpu, cuda, cuda:N or auto (default cpu)");
  cmd->add_option("--dtype", args.dtype, "f32, or bf16 on CUDA (default f32)");
}

std::string model_dir(const std::string& dir) {
  if (fs::exists(fs::path(dir) / "config.json") || fs::exists(fs::path(dir) / "manifest.json")) return dir;
  std::optional<std::string> newest = newest_valid_checkpoint(dir);
  if (!newest) throw UserError(fmt::format("{} holds neither config.json nor a valid step_* checkpoint", dir));
  return *newest;
}

// The context a checkpoint is evaluated in: --device and --dtype, eval mode.
Context eval_context(const ModelArgs& args) {
  Context ctx;
  ctx.device = resolve_device(args.device);
  ctx.dtype = parse_dtype(args.dtype);
  if (ctx.device.is_cuda()) {
    require_cuda("--device cuda");
    set_current_device(ctx.device);
  } else if (ctx.dtype != DType::f32) {
    throw UserError("--dtype bf16 needs --device cuda; the CPU path computes in f32");
  }
  ctx.stream = Stream::create(ctx.device);
  ctx.training = false;
  return ctx;
}

// The config a tandem step directory was trained with (its manifest's,
// verified) and the model it names.
struct StepConfig {
  toml::table table;
  std::string model;
  const toml::table& options() const {  // the model's own table: [lstm], [cnn], ...
    static const toml::table none;
    const toml::table* t = table[model].as_table();
    return t ? *t : none;
  }
};

StepConfig step_config(const std::string& step_dir) {
  nlohmann::json manifest = verify_checkpoint(step_dir);
  StepConfig c{toml::parse(manifest.value("config", std::string())), ""};
  c.model = c.table["model"].value_or(std::string());
  return c;
}

// A language model and the context it computes in (evaluation mode).
struct Loaded {
  std::unique_ptr<models::Gpt2> gpt2;  // one of these two
  std::unique_ptr<models::CharLstm> lstm;
  Module* model = nullptr;
  int64_t vocab_size = 0;
  int64_t context = 0;  // the longest input it takes, or reads well
  Context ctx;
};

// The lstm of a tandem step directory: built from the config in its
// manifest, weights from its model.safetensors.
void load_lstm(Loaded& l, const std::string& step_dir, const StepConfig& config) {
  if (config.model != "lstm")
    throw UserError(fmt::format("{} holds a '{}' model: generate takes gpt2 (with config.json) or lstm; eval also "
                                "takes mlp, cnn and resnet",
                                step_dir, config.model));
  l.lstm = std::make_unique<models::CharLstm>(models::parse_lstm_options(config.options(), step_dir + "/manifest.json"));
  l.lstm->params.allocate(l.ctx.device, l.ctx.dtype, load_resume_point(step_dir, l.lstm->params).weights);
  l.model = &l.lstm->net;
  l.vocab_size = l.lstm->params.find("head.bias").numel();
  l.context = config.table["seq_len"].value_or(int64_t{64});  // what it was trained on
}

// The language model in `dir` (a step or Hugging Face directory); `config`:
// a step directory's, when the caller has read it already.
Loaded load(const ModelArgs& args, const std::string& dir, const std::optional<StepConfig>& config = std::nullopt) {
  Loaded l;
  l.ctx = eval_context(args);
  if (!fs::exists(fs::path(dir) / "config.json")) {
    load_lstm(l, dir, config ? *config : step_config(dir));
    return l;
  }
  l.gpt2 = models::load_gpt2(dir, l.ctx.device, l.ctx.dtype);
  l.model = l.gpt2.get();
  l.vocab_size = l.gpt2->config().vocab_size;
  l.context = l.gpt2->config().n_positions;
  return l;
}

struct EvalArgs : ModelArgs {
  std::string data;
  int64_t batch_size = 0, seq_len = 0, batches = 0;  // 0: the default
};

// An image classifier's loss and accuracy on the test split of its data set
// (the directory the config names, or --data), whole.
void run_image_eval(const EvalArgs& args, const std::string& step_dir, const StepConfig& config) {
  if (args.seq_len > 0 || args.batches > 0)
    throw UserError(fmt::format("--seq-len and --batches are for language models; {} holds a {}, evaluated on its "
                                "whole test set",
                                step_dir, config.model));
  std::string where = step_dir + "/manifest.json";
  std::string data_dir = args.data.empty() ? config.table["data_dir"].value_or(std::string()) : args.data;
  ImageDataset test = load_image_split(config.table["data"].value_or(std::string()), data_dir, /*train=*/false,
                                       config.model, where);
  std::unique_ptr<models::ImageClassifier> model =
      make_image_classifier(config.model, config.options(), test.features(), kFashionMnistClasses, where);
  Context ctx = eval_context(args);
  ResumePoint saved = load_resume_point(step_dir, model->params);
  model->params.allocate(ctx.device, ctx.dtype, saved.weights);
  if (saved.buffers.defined()) model->params.buffer_values().copy_from(saved.buffers);  // batch-norm statistics
  ClassifierScore score = evaluate_classifier(model->net, test, args.batch_size > 0 ? args.batch_size : 1000, ctx);
  nlohmann::json out = {{"loss", score.loss}, {"accuracy", score.accuracy}, {"images", test.count}};
  fmt::print("{}\n", out.dump());
}

void run_eval(const EvalArgs& args) {
  std::string dir = model_dir(args.checkpoint);
  std::optional<StepConfig> config;  // a tandem step directory's; none for a Hugging Face directory
  if (!fs::exists(fs::path(dir) / "config.json")) {
    config = step_config(dir);
    if (is_image_model(config->model)) return run_image_eval(args, dir, *config);
  }
  if (args.data.empty())
    throw UserError(fmt::format("--data is required for the language model in {}: token file(s), e.g. "
                                "data/fortunes_val.bin",
                                dir));
  Loaded l = load(args, dir, config);
  int64_t B = args.batch_size > 0 ? args.batch_size : 4;
  int64_t T = args.seq_len > 0 ? args.seq_len : l.context;
  if (l.gpt2 && T > l.context)
    throw UserError(fmt::format("--seq-len {} exceeds the model's n_positions {}", T, l.context));
  TokenLoader loader(expand_token_shards(args.data), {.batch_size = B, .seq_len = T});
  int64_t batches = args.batches > 0 ? std::min(args.batches, loader.num_batches()) : loader.num_batches();
  double loss = mean_token_loss(*l.model, loader, batches, l.ctx);
  nlohmann::json out = {{"loss", loss}, {"batches", batches}, {"batch_size", B}, {"seq_len", T},
                        {"tokens", batches * B * T}};
  fmt::print("{}\n", out.dump());
}

struct GenerateArgs : ModelArgs {
  std::string prompt;
  int64_t tokens = 200;
  double temperature = 1.0;
  uint64_t seed = 0;
};

// A token drawn from softmax(logits / temperature) with the uniform `u`;
// the most likely one at temperature 0.
int32_t sample(const std::vector<float>& logits, double temperature, float u) {
  if (temperature <= 0) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  float top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); i++) total += p[i] = std::exp((logits[i] - top) / temperature);
  double target = u * total, sum = 0;
  for (size_t i = 0; i < p.size(); i++)
    if ((sum += p[i]) > target) return static_cast<int32_t>(i);
  return static_cast<int32_t>(p.size() - 1);
}

void run_generate(const GenerateArgs& args) {
  Loaded l = load(args, model_dir(args.checkpoint));
  if (l.vocab_size != kByteVocabSize)
    throw UserError(fmt::format("generate reads and writes bytes: the model's vocab_size must be {}, it is {} "
                                "(a GPT-2 BPE model needs its tokenizer)",
                                kByteVocabSize, l.vocab_size));
  std::vector<uint16_t> prompt = byte_encode(args.prompt.empty() ? "\n" : args.prompt);
  std::vector<int32_t> context(prompt.begin(), prompt.end());
  fmt::print("{}", args.prompt);
  std::fflush(stdout);
  for (int64_t i = 0; i < args.tokens; i++) {
    // The window of the last `l.context` tokens, run whole at each step (no
    // key/value cache, no carried LSTM state): the byte models this serves
    // are small.
    int64_t T = std::min<int64_t>(static_cast<int64_t>(context.size()), l.context);
    Tensor tokens = Tensor::empty({1, T}, DType::i32, Device::cpu());
    std::copy(context.end() - T, context.end(), tokens.data_as<int32_t>());
    if (l.ctx.device.is_cuda()) tokens = tokens.to(l.ctx.device);
    Tensor logits = l.model->forward(tokens, l.ctx);
    l.ctx.stream.synchronize();
    std::vector<float> last = logits.reshape({T, l.vocab_size}).slice_rows(T - 1, T).to_vector();
    int32_t next = sample(last, args.temperature, philox_uniform(args.seed, static_cast<uint64_t>(i)));
    context.push_back(next);
    fmt::print("{}", static_cast<char>(next));
    std::fflush(stdout);
  }
  fmt::print("\n");
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "Mean loss of a checkpoint: next-token loss of a GPT-2 or LSTM on token "
                                            "files; loss and accuracy of an mlp, cnn or resnet on its test set");
  add_model_options(cmd, *args);
  cmd->add_option("--data", args->data, "Language models: llm.c token file(s), a glob pattern: data/fortunes_val.bin "
                                        "(required). Image classifiers: the data directory (default: the config's)");
  cmd->add_option("--batch-size", args->batch_size, "Sequences per batch (default 4), or images (default 1000)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", args->seq_len, "Tokens per sequence (default: the model's n_positions)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batches", args->batches, "Batches to evaluate (default: the whole file)")
      ->check(CLI::PositiveNumber);
  cmd->callback([args] { run_eval(*args); });
}

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Sample text from a byte-level GPT-2 or LSTM checkpoint");
  add_model_options(cmd, *args);
  cmd->add_option("--prompt", args->prompt, "Text to continue (default: a newline)");
  cmd->add_option("--tokens", args->tokens, "Tokens (bytes) to generate (default 200)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", args->temperature, "Softmax temperature; 0 picks the most likely (default 1)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", args->seed, "Sampling seed (default 0)");
  cmd->callback([args] { run_generate(*args); });
}

}  // namespace tandem::tools
