// `tandem bench model` as a user runs it: a few GPT-2 training steps on the
// CPU with the tiny preset, and the clear errors for bad choices.
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "bench/bench_model.h"
#include "support/process.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

namespace {

ShellResult run(const std::string& args) { return run_shell(tandem_binary() + " " + args + " 2>&1"); }

const char* kTinySteps = "bench model --model gpt2-tiny --device cpu --steps 2 --warmup 1 --batch-size 2 --seq-len 32";

}  // namespace

TEST_CASE("tandem bench model times GPT-2 training steps and writes JSON", "[e2e][bench]") {
  fs::path json = fs::temp_directory_path() / fmt::format("tandem_bench_model_{}.json", fresh_seed());
  ShellResult r = run(fmt::format("{} --json {}", kTinySteps, json.string()));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  std::ifstream in(json);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  fs::remove(json);
  REQUIRE(j.is_object());

  models::Gpt2Config tiny = bench::gpt2_preset("gpt2-tiny");
  REQUIRE(j["model"] == "gpt2-tiny");
  REQUIRE(j["parameters"].get<int64_t>() == models::gpt2_num_parameters(tiny));
  REQUIRE(j["batch_size"] == 2);
  REQUIRE(j["seq_len"] == 32);
  REQUIRE(j["dtype"] == "f32");
  REQUIRE(j["device"] == "cpu");
  REQUIRE(j["steps"] == 2);
  REQUIRE(j["tokens_per_s"].get<double>() > 0);
  REQUIRE(j["step_ms"].get<double>() > 0);
  REQUIRE(j["flops_per_token"].get<double>() == models::gpt2_flops_per_token(tiny, 32));
  REQUIRE(j["model_tflops"].get<double>() > 0);
  REQUIRE(j["mfu"].is_null());  // no peak on the CPU
  // Random init puts the first loss near ln(256) = 5.55; three AdamW steps
  // on the same batch bring it down a little (to 5.1 with the fixed seeds).
  double loss = j["loss"].get<double>();
  REQUIRE(std::isfinite(loss));
  REQUIRE(loss > 4.0);
  REQUIRE(loss < std::log(256.0) + 0.5);
}

TEST_CASE("tandem bench model: bad choices are clear errors", "[e2e][bench]") {
  ShellResult unknown = run("bench model --model gpt2-xxl --device cpu");
  INFO(unknown.output);
  REQUIRE(unknown.exit_code == 2);
  REQUIRE(unknown.output.find("unknown model 'gpt2-xxl'") != std::string::npos);
  REQUIRE(unknown.output.find("gpt2-tiny") != std::string::npos);

  ShellResult too_long = run("bench model --model gpt2-tiny --device cpu --seq-len 4096");
  INFO(too_long.output);
  REQUIRE(too_long.exit_code == 2);
  REQUIRE(too_long.output.find("--seq-len 4096 is longer than gpt2-tiny's n_positions 128") != std::string::npos);

  ShellResult bf16 = run("bench model --model gpt2-tiny --device cpu --dtype bf16");
  INFO(bf16.output);
  REQUIRE(bf16.exit_code == 2);
  REQUIRE(bf16.output.find("needs a CUDA device") != std::string::npos);
}
