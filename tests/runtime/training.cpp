// Sampler, configs, learning-rate schedule and optimizer wiring.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "runtime/config.h"
#include "runtime/optimizer.h"
#include "runtime/sampler.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

TEST_CASE("epoch permutations are permutations, fixed by (seed, epoch)", "[sampler]") {
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}}) {
    std::vector<int64_t> p = epoch_permutation(n, 5, 0);
    REQUIRE(std::set<int64_t>(p.begin(), p.end()).size() == static_cast<size_t>(n));
    REQUIRE(p == epoch_permutation(n, 5, 0));
    if (n > 7) {
      REQUIRE(p != epoch_permutation(n, 5, 1));
      REQUIRE(p != epoch_permutation(n, 6, 0));
    }
  }
}

TEST_CASE("the ranks' batches at a step form the single-process global batch", "[sampler]") {
  const int64_t n = 1000, b = 6;
  for (int world : {1, 2, 3, 4}) {
    EpochSampler single(n, b * world, 11);
    std::vector<EpochSampler> ranks;
    for (int r = 0; r < world; r++) ranks.emplace_back(n, b, 11, r, world);
    REQUIRE(ranks[0].steps_per_epoch() == single.steps_per_epoch());
    for (int64_t step : {int64_t{0}, int64_t{5}, single.steps_per_epoch() + 3}) {
      std::vector<int64_t> together;
      for (auto& r : ranks) {
        std::vector<int64_t> part = r.batch(step);
        together.insert(together.end(), part.begin(), part.end());
      }
      REQUIRE(together == single.batch(step));
    }
  }
  REQUIRE_THROWS_AS(EpochSampler(10, 11, 0), UserError);
  REQUIRE_THROWS_AS(EpochSampler(10, 0, 0), UserError);
}

TEST_CASE("an epoch visits every sample once", "[sampler]") {
  EpochSampler s(100, 10, 3);
  std::set<int64_t> seen;
  for (int64_t step = 0; step < s.steps_per_epoch(); step++)
    for (int64_t i : s.batch(step)) seen.insert(i);
  REQUIRE(seen.size() == 100);
}

namespace {

std::string write_config(const std::string& text) {
  fs::path p = fs::temp_directory_path() / fmt::format("tandem_cfg_{}.toml", fresh_seed());
  std::ofstream(p) << text;
  return p.string();
}

}  // namespace

TEST_CASE("configs load, take overrides and reject bad keys", "[config]") {
  std::string good = write_config("model = \"mlp\"\nlr = 0.01\nbatch_size = 32\n[mlp]\nhidden = [64]\n");
  TrainConfig c = load_train_config(good, {"lr=0.5", "mlp.hidden=[8, 4]", "device=cuda:1", "nesterov=true"});
  REQUIRE(c.lr == 0.5);
  REQUIRE(c.batch_size == 32);
  REQUIRE(c.device == "cuda:1");
  REQUIRE(c.nesterov);
  REQUIRE(c.model_options["hidden"].as_array()->size() == 2);
  REQUIRE(load_train_config(good, {"lr=1"}).lr == 1.0);  // integers are numbers too

  auto rejected = [&](const std::string& text, std::vector<std::string> overrides, const std::string& needle) {
    std::string path = write_config(text);
    try {
      load_train_config(path, overrides);
      FAIL("accepted");
    } catch (const UserError& e) {
      INFO(e.what());
      REQUIRE(std::string(e.what()).find(needle) != std::string::npos);
    }
    fs::remove(path);
  };
  rejected("model = \"mlp\"\nlearning_rate = 1\n", {}, "learning_rate");
  rejected("model = \"mlp\"\n", {"bogus=1"}, "bogus");
  rejected("model = \"mlp\"\nbatch_size = \"big\"\n", {}, "batch_size");
  rejected("model = \"mlp\"\nbatch_size = 0\n", {}, "batch_size");
  rejected("model = \"mlp\"\nlr = -1.0\n", {}, "lr");
  rejected("model = \"mlp\"\noptimizer = \"lion\"\n", {}, "optimizer");
  rejected("model = \"mlp\"\ndtype = \"f8\"\n", {}, "dtype");
  rejected("lr = 1.0\n", {}, "model");
  rejected("model = \"mlp\"\nlr = [1\n", {}, "line");
  rejected("model = \"mlp\"\n", {"novalue"}, "key=value");
  rejected("model = \"mlp\"\nrandom_crop_padding = -1\n", {}, "random_crop_padding");
  rejected("model = \"lstm\"\ndata = \"tokens\"\nrandom_hflip = true\n", {}, "not images");
  TrainConfig augmented = load_train_config(good, {"random_crop_padding=2", "random_hflip=true"});
  REQUIRE(augmented.random_crop_padding == 2);
  REQUIRE(augmented.random_hflip);
  fs::remove(good);
}

TEST_CASE("the learning rate warms up linearly and decays by cosine", "[optimizer]") {
  LrSchedule s{1.0f, 10, 110, 0.1f, true};
  REQUIRE(s.at(0) == Approx(0.1));
  REQUIRE(s.at(9) == Approx(1.0));
  REQUIRE(s.at(10) == Approx(1.0));
  REQUIRE(s.at(60) == Approx(0.55));  // halfway: the mean of max and min
  REQUIRE(s.at(110) == Approx(0.1));
  REQUIRE(s.at(1000) == Approx(0.1));
  LrSchedule constant{0.5f, 0, 100, 0.f, false};
  REQUIRE(constant.at(99) == 0.5f);
}

TEST_CASE("gradient clipping scales to the max norm", "[optimizer]") {
  ParameterSet params;
  params.add("a", {3}, Init::zeros());
  params.add("b", {1}, Init::zeros());
  params.allocate(Device::cpu(), DType::f32, 0);
  params.find("a").grad.data_as<float>()[0] = 3.f;
  params.find("b").grad.data_as<float>()[0] = 4.f;
  GradClipper clipper(Device::cpu());
  ClipResult r = clipper.compute(params, 1.f, Stream());
  REQUIRE(r.norm == Approx(5.0));
  REQUIRE(r.scale == Approx(0.2).epsilon(1e-5));
  REQUIRE(clipper.compute(params, 10.f, Stream()).scale == 1.f);
  REQUIRE(clipper.compute(params, 0.f, Stream()).scale == 1.f);
}

TEST_CASE("parameters are views of one flat buffer, initialised from the seed", "[optimizer]") {
  ParameterSet a, b;
  for (ParameterSet* p : {&a, &b}) {
    p->add("w", {5, 3}, Init::uniform(0.5f));
    p->add("bias", {5}, Init::zeros());
    p->add("g", {3}, Init::ones());
  }
  a.allocate(Device::cpu(), DType::f32, 17);
  b.allocate(Device::cpu(), DType::f32, 17);
  REQUIRE(a.values().to_vector() == b.values().to_vector());
  const Parameter& w = a.find("w");
  REQUIRE(w.value.data() == a.values().data());
  REQUIRE(a.find("bias").offset % 8 == 0);  // aligned views
  for (float v : w.value.to_vector()) REQUIRE(std::fabs(v) <= 0.5f);
  REQUIRE(a.find("bias").value.to_vector() == std::vector<float>(5, 0.f));
  REQUIRE(a.find("g").value.to_vector() == std::vector<float>(3, 1.f));
  REQUIRE_THROWS_AS(a.find("nope"), Error);
}
