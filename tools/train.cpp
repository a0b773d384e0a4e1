// tandem train: reads a config, builds the model it names, trains it.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <utility>
#include <vector>

#include "collectives/watchdog.h"
#include "models/gpt2/hf_checkpoint.h"
#include "models/lstm/lstm.h"
#include "runtime/core/log.h"
#include "runtime/lm_task.h"
#include "runtime/trainer.h"
#include "tools/commands.h"
#include "tools/image_models.h"

namespace tandem::tools {

namespace {

struct TrainArgs {
  std::string config;
  std::vector<std::string> overrides;
  std::string metrics_out;
  std::string ckpt_dir;
  std::string trace_out;
  std::string resume;  // empty: auto when the launcher restarted the job, else none
  int keep = 0;
};

// The exit code of a rank whose watchdog found a stuck collective
// (docs/FAULT_TOLERANCE.md); 124, as timeout(1) uses for "ran out of time".
constexpr int kExitStuck = 124;

// Runs the process's watchdog for the life of the communicators (declare it
// before them): a stuck collective is logged and ends the process, so the
// launcher stops the other ranks (Note [Watchdog] in collectives/watchdog.h).
struct WatchdogGuard {
  WatchdogGuard() {
    collectives::Watchdog::process().start([](const std::string& message) {
      log_error("{}", message);
      std::fflush(stdout);
      std::fflush(stderr);
      std::_Exit(kExitStuck);
    });
  }
  ~WatchdogGuard() { collectives::Watchdog::process().stop(); }
  WatchdogGuard(const WatchdogGuard&) = delete;
  WatchdogGuard& operator=(const WatchdogGuard&) = delete;
};

// Under `tandem launch` (which sets TANDEM_RESTART_COUNT, 0 on the first
// attempt) a job continues from the newest valid checkpoint in --ckpt-dir,
// so a restarted or relaunched job loses nothing; by hand it starts fresh
// unless asked.
std::string default_resume() { return std::getenv("TANDEM_RESTART_COUNT") ? "auto" : "none"; }

TrainOutputs train_outputs(const TrainArgs& args) {
  return {.metrics_out = args.metrics_out,
          .ckpt_dir = args.ckpt_dir,
          .progress = true,
          .trace_out = args.trace_out,
          .resume = args.resume.empty() ? default_resume() : args.resume,
          .keep = args.keep};
}

// Rank 0 prints one JSON line: steps, final_loss, the last evaluation, seconds.
void print_summary(const TrainSummary& s) {
  nlohmann::json summary = {{"steps", s.steps}, {"final_loss", s.final_loss}};
  summary.update(s.eval);
  summary["seconds"] = s.seconds;
  fmt::print("{}\n", summary.dump());
}

// The image classifiers (mlp, cnn, resnet) on Fashion-MNIST.
TrainSummary train_images(const TrainConfig& config, const TrainArgs& args, const parallel::ProcessGroup& pg) {
  ImageDataset train = load_image_split(config.data, config.data_dir, /*train=*/true, config.model, args.config);
  ImageDataset test = load_image_split(config.data, config.data_dir, /*train=*/false, config.model, args.config);
  log_info("loaded Fashion-MNIST from {}: {} train, {} test images", config.data_dir, train.count, test.count);
  std::unique_ptr<models::ImageClassifier> model =
      make_image_classifier(config.model, config.model_options, train.features(), kFashionMnistClasses, args.config);
  return train_classifier(config, model->net, model->params, train, test, train_outputs(args), pg);
}

TrainSummary train_lstm(const TrainConfig& config, const TrainArgs& args, const parallel::ProcessGroup& pg) {
  if (config.data != "tokens")
    throw UserError(fmt::format("data '{}' in {} is not known for the lstm (available: tokens)", config.data,
                                args.config));
  models::CharLstm lstm(models::parse_lstm_options(config.model_options, args.config));
  LanguageModelTask task(config, pg);
  return train(config, lstm.net, lstm.params, task, train_outputs(args), pg);
}

TrainSummary train_gpt2(const TrainConfig& config, const TrainArgs& args, const parallel::ProcessGroup& pg) {
  if (config.data != "tokens")
    throw UserError(fmt::format("data '{}' in {} is not known for gpt2 (available: tokens)", config.data, args.config));
  // init_from: a Hugging Face directory's architecture and weights; else the [gpt2] table and the seed.
  models::Gpt2Config arch = config.init_from.empty()
                                ? models::parse_gpt2_config(config.model_options, args.config)
                                : models::read_hf_config(config.init_from);
  if (config.seq_len > arch.n_positions)
    throw UserError(fmt::format("seq_len {} exceeds the model's n_positions {}", config.seq_len, arch.n_positions));
  models::Gpt2 gpt2(arch);
  if (!config.init_from.empty()) {
    gpt2.params.set_initial_values(models::read_hf_weights(config.init_from, gpt2.params));
    log_info("starting from the weights in {}", config.init_from);
  }
  LanguageModelTask task(config, pg);
  TrainOutputs outputs = train_outputs(args);
  outputs.checkpoint_files["config.json"] = models::to_hf_config(arch).dump(2) + "\n";
  return train(config, gpt2, gpt2.params, task, outputs, pg);
}

using TrainModel = TrainSummary (*)(const TrainConfig&, const TrainArgs&, const parallel::ProcessGroup&);

// Each `model` a config may name, in the order the error lists them.
const std::vector<std::pair<std::string, TrainModel>> kModels = {
    {"mlp", train_images}, {"cnn", train_images}, {"resnet", train_images}, {"lstm", train_lstm}, {"gpt2", train_gpt2}};

void run_train(const TrainArgs& args) {
  TrainConfig config = load_train_config(args.config, args.overrides);
  auto model = std::find_if(kModels.begin(), kModels.end(), [&](const auto& m) { return m.first == config.model; });
  if (model == kModels.end()) {
    std::string names;
    for (const auto& m : kModels) names += (names.empty() ? "" : ", ") + m.first;
    throw UserError(fmt::format("model '{}' in {} is not known (available: {})", config.model, args.config, names));
  }
  auto timeout = collectives::Millis(static_cast<int64_t>(config.comm_timeout * 1000));
  WatchdogGuard watchdog;
  parallel::ProcessGroup pg = parallel::init_process_group(config.backend, resolve_device(config.device), timeout);
  TrainSummary s = model->second(config, args, pg);
  if (pg.rank() == 0) print_summary(s);
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train a model from a TOML config");
  cmd->add_option("--config", args->config, "Config file, e.g. models/mlp/fashion.toml")->required()->check(CLI::ExistingFile);
  cmd->add_option("--set", args->overrides, "Override a config key: --set lr=0.01 --set mlp.hidden=[128]");
  cmd->add_option("--metrics-out", args->metrics_out, "Write one JSON object per logged step to this file");
  cmd->add_option("--ckpt-dir", args->ckpt_dir, "Write checkpoints under this directory");
  // Shorthands for the config keys, as other launchers spell them.
  cmd->add_option_function<int64_t>(
         "--ckpt-every", [args](int64_t n) { args->overrides.push_back(fmt::format("ckpt_every={}", n)); },
         "Checkpoint every N steps, and at the end (the config's ckpt_every)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option_function<std::string>(
      "--init-from",
      [args](const std::string& dir) { args->overrides.push_back("init_from=" + nlohmann::json(dir).dump()); },
      "Start GPT-2 from a Hugging Face directory's weights (config.json + model.safetensors; the config's init_from)");
  cmd->add_option("--resume", args->resume,
                  "auto (the newest valid checkpoint in --ckpt-dir), none, or a checkpoint directory "
                  "(default: auto under tandem launch, else none)");
  cmd->add_option("--keep", args->keep, "Keep only the newest K checkpoints (default: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--trace-out", args->trace_out,
                  "Write a Chrome/Perfetto trace (forward/backward per module, all-reduce per bucket)");
  cmd->callback([args] { run_train(*args); });
}

}  // namespace tandem::tools
