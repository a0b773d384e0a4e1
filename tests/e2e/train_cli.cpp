// The `tandem train` command as a user runs it: a short run on the real
// Fashion-MNIST files, its metrics file and checkpoint, and one clear line
// (exit 2) for each kind of bad input.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/checkpoint.h"
#include "runtime/safetensors.h"
#include "support/json_output.h"
#include "support/process.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

namespace {

using Run = ShellResult;

bool have_fashion_mnist() { return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"); }

}  // namespace

TEST_CASE("tandem train runs, logs JSON metrics and writes a checkpoint", "[e2e]") {
  if (!have_fashion_mnist()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  fs::path dir = fs::temp_directory_path() / fmt::format("tandem_e2e_{}", fresh_seed());
  std::string metrics = (dir / "metrics.jsonl").string();
  Run r = run_tandem("train --config " + source_path("models/mlp/fashion.toml") +
              " --set max_steps=60 --set log_every=20 --set eval_every=60 --set mlp.hidden=[64]" +
              " --metrics-out " + metrics + " --ckpt-dir " + (dir / "ckpt").string());
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  REQUIRE(r.output.find("ETA") != std::string::npos);  // the progress line

  std::ifstream in(metrics);
  std::vector<nlohmann::json> records;
  for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
  REQUIRE(records.size() == 4);  // steps 20, 40, 60 and one evaluation
  for (int i = 0; i < 3; i++) {
    for (const char* key : {"step", "epoch", "loss", "lr", "samples_per_s", "step_ms"}) REQUIRE(records[i].contains(key));
    REQUIRE(records[i]["step"] == 20 * (i + 1));
    REQUIRE(std::isfinite(records[i]["loss"].get<double>()));
  }
  REQUIRE(records[2]["loss"].get<double>() < 2.0);  // it learned something from ln(10) = 2.30
  REQUIRE(records[3]["test_accuracy"].get<double>() > 0.5);

  std::string ckpt = (dir / "ckpt" / "step_00000060").string();
  nlohmann::json manifest = verify_checkpoint(ckpt);
  REQUIRE(manifest["step"] == 60);
  SafetensorsFile model = read_safetensors(ckpt + "/model.safetensors");
  REQUIRE(model.tensors.at("layers.0.weight").shape() == Shape{64, 784});
  REQUIRE(model.tensors.at("layers.3.bias").shape() == Shape{10});  // Linear, ReLU, Dropout, Linear
  fs::remove_all(dir);
}

TEST_CASE("two runs with the same seed end with identical weights", "[e2e]") {
  if (!have_fashion_mnist()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  fs::path dir = fs::temp_directory_path() / fmt::format("tandem_det_{}", fresh_seed());
  std::string common = "train --config " + source_path("models/mlp/fashion.toml") +
                       " --set max_steps=15 --set eval_every=1000 --set mlp.hidden=[32] --ckpt-dir ";
  REQUIRE(run_tandem(common + (dir / "a").string()).exit_code == 0);
  REQUIRE(run_tandem(common + (dir / "b").string()).exit_code == 0);
  auto a = read_safetensors((dir / "a" / "step_00000015" / "model.safetensors").string());
  auto b = read_safetensors((dir / "b" / "step_00000015" / "model.safetensors").string());
  for (auto& [name, t] : a.tensors) REQUIRE(t.to_vector() == b.tensors.at(name).to_vector());
  fs::remove_all(dir);
}

TEST_CASE("bad input gets one clear line and exit code 2", "[e2e]") {
  std::string cfg = source_path("models/mlp/fashion.toml");
  struct Case {
    std::string args, needle;
  };
  std::vector<Case> cases = {
      {"train --config " + cfg + " --set learning_rate=1", "unknown config key 'learning_rate'"},
      {"train --config " + cfg + " --set batch_size=-3", "batch_size"},
      {"train --config " + cfg + " --set data_dir=/nonexistent", "not found"},
      {"train --config " + cfg + " --set device=tpu", "unknown device 'tpu'"},
      {"train --config " + cfg + " --set mlp.hidden=[0]", "mlp.hidden"},
      {"train --config " + cfg + " --set mlp.depth=3", "unknown config key 'depth'"},
      {"train --config " + cfg + " --set dtype=bf16", "needs device"},
  };
  for (const Case& c : cases) {
    Run r = run_tandem(c.args);
    INFO(c.args << "\n" << r.output);
    REQUIRE(r.exit_code == 2);
    REQUIRE(r.output.find(c.needle) != std::string::npos);
    REQUIRE(r.output.find("tandem: error:") != std::string::npos);
  }
  // Flags as well as config values: a missing file, an unknown flag.
  for (const std::string& args : std::vector<std::string>{"train --config /nonexistent.toml",
                                                           "train --config " + cfg + " --learning-rate 1"}) {
    Run r = run_tandem(args);
    INFO(args << "\n" << r.output);
    REQUIRE(r.exit_code == 2);
    REQUIRE(r.output.find("tandem: error:") != std::string::npos);
    REQUIRE(r.output.find(args.find("nonexistent") != std::string::npos ? "nonexistent.toml" : "--learning-rate") !=
            std::string::npos);
  }
}

TEST_CASE("the README's MLP reaches 0.85 test accuracy in one epoch", "[e2e]") {
  if (!have_fashion_mnist()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  Run r = run_tandem("train --config " + source_path("models/mlp/fashion.toml") + " --set epochs=1");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  REQUIRE(last_json(r.output)["test_accuracy"].get<double>() >= 0.85);
}

TEST_CASE("tandem bench kernels runs on the CPU and writes its JSON", "[e2e]") {
  fs::path out = fs::temp_directory_path() / fmt::format("tandem_bench_{}.json", fresh_seed());
  Run r = run_tandem("bench kernels --device cpu --json " + out.string());
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  REQUIRE(r.output.find("% peak") != std::string::npos);
  std::ifstream in(out);
  nlohmann::json report = nlohmann::json::parse(in);
  REQUIRE(report["device"] == "cpu");
  REQUIRE(report["results"].size() >= 17);  // every kernel family
  for (const auto& row : report["results"]) {
    REQUIRE(row["ms"].get<double>() > 0);
    REQUIRE(std::isfinite(row["gbytes_per_s"].get<double>()));
  }
  fs::remove(out);
}

TEST_CASE("tandem ckpt verify and inspect name what they find", "[e2e][ckpt]") {
  if (!have_fashion_mnist()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  fs::path dir = fs::temp_directory_path() / fmt::format("tandem_ckpt_cli_{}", fresh_seed());
  REQUIRE(run_tandem("train --config " + source_path("models/mlp/fashion.toml") +
              " --set max_steps=4 --set eval_every=1000 --set mlp.hidden=[16] --ckpt-dir " + dir.string())
              .exit_code == 0);
  Run ok = run_tandem("ckpt verify " + dir.string());
  INFO(ok.output);
  REQUIRE(ok.exit_code == 0);
  REQUIRE(ok.output.find("ok") != std::string::npos);
  Run inspect = run_tandem("ckpt inspect " + (dir / "step_00000004").string());
  REQUIRE(inspect.exit_code == 0);
  REQUIRE(inspect.output.find("layers.0.weight") != std::string::npos);
  REQUIRE(inspect.output.find("[16, 784]") != std::string::npos);
  REQUIRE(inspect.output.find("exp_avg") != std::string::npos);

  // --ckpt-every N --keep K: a checkpoint every N steps and at the end, the newest K kept.
  fs::path kept = dir / "kept";
  REQUIRE(run_tandem("train --config " + source_path("models/mlp/fashion.toml") +
                     " --set max_steps=9 --set eval_every=1000 --set mlp.hidden=[16] --ckpt-every 2 --keep 2 "
                     "--ckpt-dir " + kept.string())
              .exit_code == 0);
  std::vector<std::string> steps;
  for (const fs::directory_entry& e : fs::directory_iterator(kept)) steps.push_back(e.path().filename().string());
  std::sort(steps.begin(), steps.end());
  REQUIRE(steps == std::vector<std::string>{"step_00000008", "step_00000009"});

  fs::resize_file(dir / "step_00000004" / "optimizer.safetensors", 100);
  Run bad = run_tandem("ckpt verify " + dir.string());
  REQUIRE(bad.exit_code == 2);
  REQUIRE(bad.output.find("optimizer.safetensors") != std::string::npos);
  REQUIRE(run_tandem("ckpt verify /nonexistent").exit_code == 2);
  fs::remove_all(dir);
}

TEST_CASE("a run killed with SIGKILL and resumed ends bitwise identical", "[e2e][ckpt]") {
  if (!have_fashion_mnist()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  fs::path dir = fs::temp_directory_path() / fmt::format("tandem_kill_{}", fresh_seed());
  std::string args = "train --config " + source_path("models/mlp/fashion.toml") +
                     " --set max_steps=2000 --set ckpt_every=100 --set eval_every=100000 --set mlp.hidden=[64] --ckpt-dir ";
  REQUIRE(run_tandem(args + (dir / "whole").string()).exit_code == 0);
  // Killed somewhere in the middle, once its second checkpoint exists (when
  // exactly does not matter: any point must resume to the same weights; a
  // fixed delay would not be the middle on a slow or busy machine).
  fs::path killed = dir / "killed";
  run_shell(fmt::format("{} {}{} >/dev/null 2>&1 & pid=$!; for i in $(seq 1200); do [ -d {}/step_00000200 ] && break; "
                        "sleep 0.05; done; kill -9 $pid; wait $pid 2>/dev/null",
                        tandem_binary(), args, killed.string(), killed.string()));
  Run resumed = run_tandem(args + killed.string() + " --resume auto");
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  REQUIRE(resumed.output.find("resuming from") != std::string::npos);  // it was killed mid-run
  REQUIRE(resumed.output.find("nothing to train") == std::string::npos);
  REQUIRE(read_bytes(dir / "whole" / "step_00002000" / "model.safetensors") ==
          read_bytes(dir / "killed" / "step_00002000" / "model.safetensors"));
  fs::remove_all(dir);
}

TEST_CASE("tandem train trains the cnn on Fashion-MNIST", "[e2e][cnn]") {
  if (!have_fashion_mnist()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  fs::path dir = fs::temp_directory_path() / fmt::format("tandem_cnn_{}", fresh_seed());
  Run r = run_tandem("train --config " + source_path("models/cnn/fashion.toml") +
                     " --set max_steps=60 --set log_every=30 --set eval_every=60 --set cnn.channels=[8,16]" +
                     " --set cnn.hidden=32 --ckpt-dir " + (dir / "ckpt").string());
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  nlohmann::json summary = last_json(r.output);
  REQUIRE(summary["test_accuracy"].get<double>() > 0.6);  // 60 steps of 128 images
  SafetensorsFile model = read_safetensors((dir / "ckpt" / "step_00000060" / "model.safetensors").string());
  REQUIRE(model.tensors.at("layers.1.weight").shape() == Shape{8, 1, 3, 3});   // Conv2d (out, in, k, k)
  REQUIRE(model.tensors.at("layers.4.weight").shape() == Shape{16, 8, 3, 3});
  REQUIRE(model.tensors.at("layers.8.weight").shape() == Shape{32, 16 * 7 * 7});  // after Flatten

  // With batch norm: the convolutions lose their bias, the running statistics are checkpointed.
  Run bn = run_tandem("train --config " + source_path("models/cnn/fashion.toml") +
                      " --set max_steps=30 --set eval_every=30 --set cnn.channels=[8] --set cnn.hidden=16" +
                      " --set cnn.batchnorm=true --ckpt-dir " + (dir / "bn").string());
  INFO(bn.output);
  REQUIRE(bn.exit_code == 0);
  SafetensorsFile bn_model = read_safetensors((dir / "bn" / "step_00000030" / "model.safetensors").string());
  REQUIRE(bn_model.tensors.count("layers.1.bias") == 0);
  REQUIRE(bn_model.tensors.at("layers.2.running_var").shape() == Shape{8});
  REQUIRE(last_json(bn.output)["test_accuracy"].get<double>() > 0.5);
  fs::remove_all(dir);
}

TEST_CASE("tandem train trains the resnet, augmented, with torchvision's names", "[e2e][cnn]") {
  if (!have_fashion_mnist()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  fs::path dir = fs::temp_directory_path() / fmt::format("tandem_resnet_{}", fresh_seed());
  std::string common = "train --config " + source_path("models/cnn/resnet.toml") +
                       " --set max_steps=40 --set eval_every=40 --set warmup_steps=0 --set lr=1e-2" +
                       " --set resnet.channels=[8,16] --set batch_size=64";
  const std::string augment = " --set random_crop_padding=2 --set random_hflip=true";
  Run r = run_tandem(common + augment + " --ckpt-dir " + (dir / "a").string());
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  // 40 steps of 64 images (0.41 with the config's seed): it learns, it is not done.
  REQUIRE(last_json(r.output)["test_accuracy"].get<double>() > 0.3);
  fs::path model = dir / "a" / "step_00000040" / "model.safetensors";
  SafetensorsFile weights = read_safetensors(model.string());
  REQUIRE(weights.tensors.at("conv1.weight").shape() == Shape{8, 1, 3, 3});
  REQUIRE(weights.tensors.at("layer1.0.conv2.weight").shape() == Shape{8, 8, 3, 3});
  REQUIRE(weights.tensors.at("layer2.0.downsample.0.weight").shape() == Shape{16, 8, 1, 1});
  REQUIRE(weights.tensors.at("layer2.0.bn2.running_var").shape() == Shape{16});
  REQUIRE(weights.tensors.at("fc.weight").shape() == Shape{10, 16});

  // The augmentation is a function of the seed: a second run is bitwise the
  // same, and one without augmentation is not.
  REQUIRE(run_tandem(common + augment + " --ckpt-dir " + (dir / "b").string()).exit_code == 0);
  REQUIRE(read_bytes(model) == read_bytes(dir / "b" / "step_00000040" / "model.safetensors"));
  REQUIRE(run_tandem(common + " --ckpt-dir " + (dir / "c").string()).exit_code == 0);
  REQUIRE(read_bytes(model) != read_bytes(dir / "c" / "step_00000040" / "model.safetensors"));
  fs::remove_all(dir);
}
