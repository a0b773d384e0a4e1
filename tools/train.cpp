// tandem train: reads a config, builds the model it names, trains it.
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "collectives/watchdog.h"
#include "models/mlp/mlp.h"
#include "runtime/core/log.h"
#include "runtime/trainer.h"
#include "tools/commands.h"

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

// Under `tandem launch --max-restarts`, a restarted job continues from its
// newest valid checkpoint; a first attempt starts fresh unless asked.
std::string default_resume() {
  const char* restarts = std::getenv("TANDEM_RESTART_COUNT");
  return restarts && std::atoi(restarts) > 0 ? "auto" : "none";
}

void run_train(const TrainArgs& args) {
  TrainConfig config = load_train_config(args.config, args.overrides);
  if (config.model != "mlp")
    throw UserError(fmt::format("model '{}' in {} is not known (available: mlp)", config.model, args.config));
  if (config.data != "fashion-mnist")
    throw UserError(fmt::format("data '{}' in {} is not known for the mlp (available: fashion-mnist)", config.data,
                                args.config));
  ImageDataset train = load_fashion_mnist(config.data_dir, /*train=*/true);
  ImageDataset test = load_fashion_mnist(config.data_dir, /*train=*/false);
  log_info("loaded Fashion-MNIST from {}: {} train, {} test images", config.data_dir, train.count, test.count);

  models::MlpOptions options = models::parse_mlp_options(config.model_options, train.features(), 10, args.config);
  models::Mlp mlp(options);
  auto timeout = collectives::Millis(static_cast<int64_t>(config.comm_timeout * 1000));
  WatchdogGuard watchdog;
  parallel::ProcessGroup pg = parallel::init_process_group(config.backend, resolve_device(config.device), timeout);
  TrainSummary s = train_classifier(config, mlp.net, mlp.params, train, test,
                                    {.metrics_out = args.metrics_out,
                                     .ckpt_dir = args.ckpt_dir,
                                     .progress = true,
                                     .trace_out = args.trace_out,
                                     .resume = args.resume.empty() ? default_resume() : args.resume,
                                     .keep = args.keep},
                                    pg);
  if (pg.rank() != 0) return;  // rank 0 prints the summary
  fmt::print("{{\"steps\": {}, \"final_loss\": {:.6f}, \"test_accuracy\": {:.4f}, \"seconds\": {:.1f}}}\n", s.steps,
             s.final_loss, s.test_accuracy, s.seconds);
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train a model from a TOML config");
  cmd->add_option("--config", args->config, "Config file, e.g. models/mlp/fashion.toml")->required()->check(CLI::ExistingFile);
  cmd->add_option("--set", args->overrides, "Override a config key: --set lr=0.01 --set mlp.hidden=[128]");
  cmd->add_option("--metrics-out", args->metrics_out, "Write one JSON object per logged step to this file");
  cmd->add_option("--ckpt-dir", args->ckpt_dir, "Write checkpoints under this directory");
  cmd->add_option("--resume", args->resume,
                  "auto (the newest valid checkpoint in --ckpt-dir), none, or a checkpoint directory "
                  "(default: auto when tandem launch restarted the job, else none)");
  cmd->add_option("--keep", args->keep, "Keep only the newest K checkpoints (default: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--trace-out", args->trace_out,
                  "Write a Chrome/Perfetto trace (forward/backward per module, all-reduce per bucket)");
  cmd->callback([args] { run_train(*args); });
}

}  // namespace tandem::tools
