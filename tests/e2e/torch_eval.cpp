// A PyTorch user's view of tandem's mlp, cnn, resnet and lstm checkpoints:
// bench/pytorch/torch_eval.py builds the torch.nn model, loads
// model.safetensors with load_state_dict(strict=True) and evaluates it in
// float64; `tandem eval` must agree. A wrong name, shape, layout or gate
// order fails the load or moves the loss far beyond the tolerance.
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "support/json_output.h"
#include "support/process.h"
#include "support/python.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

namespace {

// `tandem eval` and torch_eval.py on the same step directory.
struct Both {
  nlohmann::json ours, theirs;
};

Both evaluate(const std::string& python, const std::string& step_dir, const std::string& args = "") {
  ShellResult ours = run_tandem("eval --checkpoint " + step_dir + " " + args);
  ShellResult theirs = run_shell(fmt::format("{} {} --checkpoint {} {} 2>&1", python,
                                             source_path("bench/pytorch/torch_eval.py"), step_dir, args));
  INFO(ours.output << theirs.output);
  REQUIRE(ours.exit_code == 0);
  REQUIRE(theirs.exit_code == 0);
  return {last_json(ours.output), last_json(theirs.output)};
}

}  // namespace

TEST_CASE("PyTorch loads the image classifiers' checkpoints and agrees with tandem eval", "[e2e][torch]") {
  std::optional<std::string> python = python_with("torch, numpy");
  if (!python) {
    WARN("SKIPPED: no python3 with torch (tools/setup.sh installs python3-torch)");
    return;
  }
  if (!fs::exists("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  fs::path dir = temp_dir("torch_eval");
  struct Case {
    std::string name, config, sets;
  };
  // Batch norm in eval mode (running statistics), a Dropout between
  // Linears, GELU, a downsampling shortcut: each model's distinct parts.
  std::vector<Case> cases = {
      {"mlp", "models/mlp/fashion.toml", "--set mlp.hidden=[32,16] --set mlp.activation=\"gelu\""},
      {"cnn", "models/cnn/fashion.toml", "--set cnn.channels=[4,8] --set cnn.hidden=16 --set cnn.batchnorm=true"},
      {"resnet", "models/cnn/resnet.toml", "--set resnet.channels=[4,8] --set batch_size=32"},
  };
  for (const Case& c : cases) {
    std::string ckpt = (dir / c.name).string();
    ShellResult trained = run_tandem(fmt::format("train --config {} --set max_steps=25 --set eval_every=25 {} "
                                                 "--ckpt-dir {}",
                                                 source_path(c.config), c.sets, ckpt));
    INFO(c.name << "\n" << trained.output);
    REQUIRE(trained.exit_code == 0);
    Both both = evaluate(*python, ckpt + "/step_00000025");
    double loss = both.theirs["loss"];
    REQUIRE(std::fabs(both.ours["loss"].get<double>() - loss) <= 1e-5 * loss);
    // float32 against float64 logits: an image whose top two logits nearly
    // tie may go either way.
    REQUIRE(std::fabs(both.ours["accuracy"].get<double>() - both.theirs["accuracy"].get<double>()) <= 3e-4);
    REQUIRE(both.ours["images"] == 10000);
    // And tandem eval reads the checkpoint back to the trainer's own evaluation.
    REQUIRE(both.ours["accuracy"] == last_json(trained.output)["test_accuracy"]);
  }
  fs::remove_all(dir);
}

TEST_CASE("PyTorch loads the character LSTM's checkpoint and agrees with tandem eval", "[e2e][torch][lstm]") {
  std::optional<std::string> python = python_with("torch, numpy");
  if (!python) {
    WARN("SKIPPED: no python3 with torch (tools/setup.sh installs python3-torch)");
    return;
  }
  fs::path dir = temp_dir("torch_eval_lstm");
  {
    std::ofstream text(dir / "text.txt");
    for (int i = 0; i < 200; i++) text << "Pack my box with five dozen liquor jugs, " << i << " times over.\n";
  }
  REQUIRE(run_tandem(fmt::format("data tokenize --input {0}/text.txt --out-prefix {0}/text", dir.string())).exit_code ==
          0);
  std::ofstream(dir / "lstm.toml") << fmt::format(R"(model = "lstm"
data = "tokens"
train_data = "{0}/text_train.bin"
val_data = "{0}/text_val.bin"
batch_size = 4
seq_len = 16
max_steps = 30
lr = 1e-2
eval_every = 30
[lstm]
embedding = 8
hidden = 24
layers = 2
)",
                                                  dir.string());
  ShellResult trained = run_tandem(fmt::format("train --config {0}/lstm.toml --ckpt-dir {0}/ckpt", dir.string()));
  INFO(trained.output);
  REQUIRE(trained.exit_code == 0);
  Both both = evaluate(*python, (dir / "ckpt" / "step_00000030").string(),
                       fmt::format("--data {}/text_val.bin --batch-size 3 --seq-len 20 --batches 4", dir.string()));
  double loss = both.theirs["loss"];
  REQUIRE(std::fabs(both.ours["loss"].get<double>() - loss) <= 1e-5 * loss);
  REQUIRE(loss < std::log(256.0));  // trained, not the uniform guess
  fs::remove_all(dir);
}
