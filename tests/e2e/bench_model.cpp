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

// `tandem ARGS --json FILE`: it must succeed; the report it wrote.
nlohmann::json bench_report(const std::string& args) {
  fs::path json = fs::temp_directory_path() / fmt::format("tandem_bench_model_{}.json", fresh_seed());
  ShellResult r = run_tandem(fmt::format("{} --json {}", args, json.string()));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  std::ifstream in(json);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  fs::remove(json);
  REQUIRE(j.is_object());
  return j;
}

const char* kTinySteps = "bench model --model gpt2-tiny --device cpu --steps 2 --warmup 1 --batch-size 2 --seq-len 32";

}  // namespace

TEST_CASE("tandem bench model times GPT-2 training steps and writes JSON", "[e2e][bench]") {
  nlohmann::json j = bench_report(kTinySteps);

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
  ShellResult unknown = run_tandem("bench model --model gpt2-xxl --device cpu");
  INFO(unknown.output);
  REQUIRE(unknown.exit_code == 2);
  REQUIRE(unknown.output.find("unknown model 'gpt2-xxl'") != std::string::npos);
  REQUIRE(unknown.output.find("gpt2-tiny") != std::string::npos);

  ShellResult too_long = run_tandem("bench model --model gpt2-tiny --device cpu --seq-len 4096");
  INFO(too_long.output);
  REQUIRE(too_long.exit_code == 2);
  REQUIRE(too_long.output.find("--seq-len 4096 is longer than gpt2-tiny's n_positions 128") != std::string::npos);

  ShellResult seq = run_tandem("bench model --model cnn --device cpu --seq-len 8");
  INFO(seq.output);
  REQUIRE(seq.exit_code == 2);
  REQUIRE(seq.output.find("--seq-len is for the token models") != std::string::npos);

  ShellResult bf16 = run_tandem("bench model --model gpt2-tiny --device cpu --dtype bf16");
  INFO(bf16.output);
  REQUIRE(bf16.exit_code == 2);
  REQUIRE(bf16.output.find("needs a CUDA device") != std::string::npos);
}

TEST_CASE("tandem bench model times the cnn, the resnet and the lstm", "[e2e][bench]") {
  struct Case {
    const char* model;
    const char* rate;       // the JSON key of the throughput
    const char* flops_key;  // and of the FLOPs per unit
    double flops;           // training FLOPs per unit, worked out by hand below
    double initial_loss;    // ln(classes)
    int64_t parameters;     // weights and biases, counted by hand (BatchNorm: 2 per channel)
  };
  // Forward multiply-adds x 2 x 3 (backward costs two forwards):
  //   cnn (32, 64 channels, 128 hidden): 28^2*32*9 + 14^2*64*32*9 + 64*7*7*128 + 128*10
  //   resnet (16, 32, 64): stem 28^2*16*9; layer1 2 x 28^2*16*16*9; layer2 14^2*32*(16+32)*9 + 14^2*32*16;
  //     layer3 7^2*64*(32+64)*9 + 7^2*64*32; fc 64*10
  //   lstm (E 64, H 512, V 256): (64 + 512) * 4 * 512 + 512 * 256
  const double cnn = 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 64 * 7 * 7 * 128 + 128 * 10;
  const double resnet = 28 * 28 * 16 * 9 + 2.0 * 28 * 28 * 16 * 16 * 9 + 14 * 14 * 32 * (16 + 32) * 9 +
                        14 * 14 * 32 * 16 + 7 * 7 * 64 * (32 + 64) * 9 + 7 * 7 * 64 * 32 + 64 * 10;
  const double lstm = (64 + 512) * 4 * 512 + 512 * 256;
  //   cnn: (9 + 1) * 32 + (32 * 9 + 1) * 64 + (3136 + 1) * 128 + (128 + 1) * 10
  //   resnet: 16 * 9 + 32 + 2 * (16 * 16 * 9 + 32) + (16 * 9 * 32 + 32 * 9 * 32 + 16 * 32 + 3 * 64)
  //     + (32 * 9 * 64 + 64 * 9 * 64 + 32 * 64 + 3 * 128) + (64 + 1) * 10
  //   lstm: 256 * 64 + 2048 * (64 + 512 + 2) + (512 + 1) * 256
  const int64_t cnn_params = 10 * 32 + 289 * 64 + 3137 * 128 + 129 * 10;
  const int64_t resnet_params = 16 * 9 + 32 + 2 * (16 * 16 * 9 + 32) + (16 * 9 * 32 + 32 * 9 * 32 + 16 * 32 + 3 * 64) +
                                (32 * 9 * 64 + 64 * 9 * 64 + 32 * 64 + 3 * 128) + 65 * 10;
  const int64_t lstm_params = 256 * 64 + 2048 * (64 + 512 + 2) + 513 * 256;
  for (const Case& c : {Case{"cnn", "images_per_s", "flops_per_image", 6 * cnn, std::log(10.0), cnn_params},
                        Case{"resnet", "images_per_s", "flops_per_image", 6 * resnet, std::log(10.0), resnet_params},
                        Case{"lstm", "tokens_per_s", "flops_per_token", 6 * lstm, std::log(256.0), lstm_params}}) {
    INFO(c.model);
    nlohmann::json j =
        bench_report(fmt::format("bench model --model {} --device cpu --steps 2 --warmup 1 --batch-size 8", c.model));
    REQUIRE(j["model"] == c.model);
    REQUIRE(j["batch_size"] == 8);
    REQUIRE(j[c.rate].get<double>() > 0);
    REQUIRE(j["step_ms"].get<double>() > 0);
    REQUIRE(std::fabs(j[c.flops_key].get<double>() - c.flops) <= 1e-9 * c.flops);
    REQUIRE(j["parameters"].get<int64_t>() == c.parameters);
    double loss = j["loss"].get<double>();
    REQUIRE(std::isfinite(loss));
    REQUIRE(std::fabs(loss - c.initial_loss) < 0.5);  // random labels: little to learn in 3 steps
  }
}

TEST_CASE("the bench presets are the sizes the model configs train", "[e2e][bench]") {
  auto section = [](const char* path, const char* name) {
    return *toml::parse_file(source_path(path))[name].as_table();
  };
  models::CnnOptions cnn = models::parse_cnn_options(section("models/cnn/fashion.toml", "cnn"), 784, 10, "fashion");
  REQUIRE(cnn.channels == bench::cnn_preset().channels);
  REQUIRE(cnn.hidden == bench::cnn_preset().hidden);
  REQUIRE(cnn.batchnorm == bench::cnn_preset().batchnorm);
  models::ResNetOptions resnet =
      models::parse_resnet_options(section("models/cnn/resnet.toml", "resnet"), 784, 10, "resnet");
  REQUIRE(resnet.channels == bench::resnet_preset().channels);
  REQUIRE(resnet.blocks == bench::resnet_preset().blocks);
  models::CharLstmOptions lstm = models::parse_lstm_options(section("models/lstm/fortunes.toml", "lstm"), "fortunes");
  models::CharLstmOptions preset = bench::lstm_preset();
  REQUIRE((lstm.vocab_size == preset.vocab_size && lstm.embedding == preset.embedding && lstm.hidden == preset.hidden &&
           lstm.layers == preset.layers));
  models::Gpt2Config tiny = models::parse_gpt2_config(section("models/gpt2/tiny.toml", "gpt2"), "tiny");
  models::Gpt2Config tiny_preset = bench::gpt2_preset("gpt2-tiny");
  REQUIRE((tiny.vocab_size == tiny_preset.vocab_size && tiny.n_positions == tiny_preset.n_positions &&
           tiny.n_layer == tiny_preset.n_layer && tiny.n_head == tiny_preset.n_head && tiny.n_embd == tiny_preset.n_embd));
}
