// Exact resume: a run continued from a checkpoint ends bitwise identical to
// the run that was never interrupted, on one rank and on two; a corrupted
// newest checkpoint is skipped for the one before it.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "models/cnn/cnn.h"
#include "models/mlp/mlp.h"
#include "runtime/core/philox.h"
#include "runtime/resume.h"
#include "runtime/safetensors.h"
#include "runtime/trainer.h"
#include "runtime/thread_ranks.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

namespace {

TrainConfig config(int64_t batch, const std::string& optimizer) {
  TrainConfig c;
  c.model = "mlp";
  c.batch_size = batch;
  c.max_steps = 12;
  c.ckpt_every = 4;
  c.optimizer = optimizer;
  c.lr = 1e-2;
  c.warmup_steps = 3;
  c.weight_decay = 0.01;
  c.grad_clip = 1.0;
  c.eval_every = 1000;
  c.log_every = 1000;
  c.comm_timeout = 30;
  c.seed = 11;
  return c;
}

// Trains on `world` thread-ranks into `dir`; resume as TrainOutputs::resume says.
void train(int world, const TrainConfig& c, const ImageDataset& data, const fs::path& dir, const std::string& resume) {
  for_each_rank(world, [&](const parallel::ProcessGroup& pg) {
    models::Mlp mlp({.in_features = 64, .hidden = {32, 16}, .classes = 10, .activation = "gelu", .dropout = 0.2f});
    TrainOutputs outputs;
    outputs.ckpt_dir = dir.string();
    outputs.progress = false;
    outputs.resume = resume;
    train_classifier(c, mlp.net, mlp.params, data, data, outputs, pg);
  });
}

}  // namespace

TEST_CASE("a resumed run ends bitwise identical to an uninterrupted one", "[resume]") {
  ImageDataset data = synthetic(512, fresh_seed());
  for (int world : {1, 2}) {
    for (const char* optimizer : {"adamw", "sgd"}) {
      INFO("world " << world << ", " << optimizer);
      fs::path base = fs::temp_directory_path() / fmt::format("tandem_resume_{}", fresh_seed());
      TrainConfig c = config(32 / world, optimizer);
      train(world, c, data, base / "whole", "none");

      // The "crash": a run that wrote step 4 and step 8, then died during
      // step 11 (so step 12 and the end never came). Simulated by training
      // the same config and removing what came after step 8.
      train(world, c, data, base / "crashed", "none");
      fs::remove_all(base / "crashed" / "step_00000012");
      train(world, c, data, base / "crashed", "auto");

      std::string a = read_bytes(base / "whole" / "step_00000012" / "model.safetensors");
      std::string b = read_bytes(base / "crashed" / "step_00000012" / "model.safetensors");
      REQUIRE(!a.empty());
      REQUIRE(a == b);
      REQUIRE(read_bytes(base / "whole" / "step_00000012" / "optimizer.safetensors") ==
              read_bytes(base / "crashed" / "step_00000012" / "optimizer.safetensors"));
      fs::remove_all(base);
    }
  }
}

TEST_CASE("resume skips a corrupted newest checkpoint and still ends identical", "[resume]") {
  ImageDataset data = synthetic(512, fresh_seed());
  fs::path base = fs::temp_directory_path() / fmt::format("tandem_resume_bad_{}", fresh_seed());
  TrainConfig c = config(32, "adamw");
  train(1, c, data, base / "whole", "none");
  train(1, c, data, base / "crashed", "none");
  fs::remove_all(base / "crashed" / "step_00000012");
  {  // truncate step 8's weights: resume must fall back to step 4
    fs::path weights = base / "crashed" / "step_00000008" / "model.safetensors";
    fs::resize_file(weights, fs::file_size(weights) / 2);
  }
  auto newest = newest_valid_checkpoint((base / "crashed").string());
  REQUIRE(newest.has_value());
  REQUIRE(fs::path(*newest).filename() == "step_00000004");
  train(1, c, data, base / "crashed", "auto");
  REQUIRE(read_bytes(base / "whole" / "step_00000012" / "model.safetensors") ==
          read_bytes(base / "crashed" / "step_00000012" / "model.safetensors"));
  fs::remove_all(base);
}

TEST_CASE("resume from a checkpoint of another model is refused clearly", "[resume]") {
  ImageDataset data = synthetic(512, fresh_seed());
  fs::path base = fs::temp_directory_path() / fmt::format("tandem_resume_other_{}", fresh_seed());
  train(1, config(32, "adamw"), data, base, "none");
  models::Mlp other({.in_features = 64, .hidden = {40}, .classes = 10});
  REQUIRE_THROWS_WITH(load_resume_point((base / "step_00000012").string(), other.params),
                      Catch::Contains("layers.0.weight"));
  REQUIRE(!newest_valid_checkpoint((base / "nothing-here").string()).has_value());
  fs::remove_all(base);
}

TEST_CASE("a CNN with batch norm resumes bitwise identical, running statistics included", "[resume]") {
  ImageDataset data = synthetic(512, fresh_seed());  // 64 features: 8x8 images
  for (int world : {1, 2}) {
    INFO("world " << world);
    fs::path base = fs::temp_directory_path() / fmt::format("tandem_resume_bn_{}", fresh_seed());
    TrainConfig c = config(32 / world, "adamw");
    auto run = [&](const fs::path& dir, const std::string& resume) {
      for_each_rank(world, [&](const parallel::ProcessGroup& pg) {
        models::Cnn cnn({.image_size = 8, .channels = {4}, .hidden = 8, .classes = 10, .batchnorm = true});
        TrainOutputs outputs;
        outputs.ckpt_dir = dir.string();
        outputs.progress = false;
        outputs.resume = resume;
        train_classifier(c, cnn.net, cnn.params, data, data, outputs, pg);
      });
    };
    run(base / "whole", "none");
    run(base / "crashed", "none");
    fs::remove_all(base / "crashed" / "step_00000012");
    run(base / "crashed", "auto");

    fs::path whole = base / "whole" / "step_00000012" / "model.safetensors";
    REQUIRE(read_bytes(whole) == read_bytes(base / "crashed" / "step_00000012" / "model.safetensors"));
    SafetensorsFile model = read_safetensors(whole.string());
    std::vector<float> mean = model.tensors.at("layers.2.running_mean").to_vector();
    std::vector<float> var = model.tensors.at("layers.2.running_var").to_vector();
    REQUIRE(mean.size() == 4);
    REQUIRE(std::any_of(mean.begin(), mean.end(), [](float m) { return m != 0.f; }));  // it tracked batches
    REQUIRE(std::none_of(var.begin(), var.end(), [](float v) { return v == 1.f; }));
    fs::remove_all(base);
  }
}
