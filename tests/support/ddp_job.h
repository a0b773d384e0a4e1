// The small data-parallel job the e2e tests run several ways (under `tandem
// launch`, on two launchers, by hand): the MLP on Fashion-MNIST for
// kDdpJobSteps steps of plain SGD, with small buckets, logging every step;
// and what makes two of its runs the same (losses and final weights within
// 1e-5), as N ranks with batch B must be to one process with batch N*B.
#pragma once

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/safetensors.h"
#include "support/process.h"
#include "support/testing.h"

namespace tandem::testing {

constexpr int kDdpJobSteps = 12;

// ` train ...` with `batch` per rank; metrics and the final checkpoint under `dir`.
inline std::string ddp_job_args(int64_t batch, const std::filesystem::path& dir, const std::string& extra = "") {
  return fmt::format(" train --config {} --set batch_size={} --set max_steps={} --set log_every=1 --set eval_every=1000"
                     " --set mlp.hidden=[64] --set optimizer=sgd --set lr=0.05 --set bucket_cap_mb=0.05{}"
                     " --metrics-out {}/metrics.jsonl --ckpt-dir {}/ckpt",
                     source_path("models/mlp/fashion.toml"), batch, kDdpJobSteps, extra, dir.string(), dir.string());
}

struct DdpJobResult {
  std::vector<double> losses;
  std::map<std::string, std::vector<float>> weights;
};

inline DdpJobResult read_ddp_job(const std::filesystem::path& dir) {
  DdpJobResult r;
  std::ifstream in(dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) r.losses.push_back(j["loss"].get<double>());
  }
  auto file = read_safetensors(
      (dir / "ckpt" / fmt::format("step_{:08d}", kDdpJobSteps) / "model.safetensors").string());
  for (auto& [name, t] : file.tensors) r.weights[name] = t.to_vector();
  return r;
}

inline void require_same_job(const DdpJobResult& a, const DdpJobResult& b) {
  REQUIRE(a.losses.size() == kDdpJobSteps);
  REQUIRE(a.losses.size() == b.losses.size());
  for (size_t i = 0; i < a.losses.size(); i++) {
    INFO("step " << i + 1 << ": " << a.losses[i] << " vs " << b.losses[i]);
    REQUIRE(std::fabs(a.losses[i] - b.losses[i]) <= 1e-5 * std::fabs(b.losses[i]));
  }
  REQUIRE(!a.weights.empty());
  for (auto& [name, w] : a.weights) {
    INFO(name);
    REQUIRE(rel_error(w, b.weights.at(name)) <= 1e-5);
  }
}

}  // namespace tandem::testing
