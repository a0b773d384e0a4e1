// Data-parallel training as a user runs it: `tandem launch` starting real
// processes that train on the real Fashion-MNIST files over Gloo. N ranks
// with batch B must log the same losses and end with the same weights as
// one process with batch N*B, on one node and on two launchers.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "support/ddp_job.h"
#include "support/process.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

namespace {

int shell(const std::string& cmd, std::string* output = nullptr) {
  ShellResult r = run_shell(cmd + " 2>&1");
  if (output) *output = r.output;
  return r.exit_code;
}

std::string binary() { return tandem_binary(); }
std::string config() { return source_path("models/mlp/fashion.toml"); }

bool have_data() { return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"); }

}  // namespace

TEST_CASE("2 launched ranks train like one process with twice the batch", "[e2e][ddp]") {
  if (!have_data()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  fs::path dir = fs::temp_directory_path() / fmt::format("tandem_ddp_e2e_{}", fresh_seed());
  std::string out;
  REQUIRE(shell(binary() + ddp_job_args(64, dir / "one"), &out) == 0);
  INFO(out);
  int rc = shell(fmt::format("timeout 120 {} launch --nproc-per-node 2 --master-port 0 -- {}{}", binary(), binary(),
                             ddp_job_args(32, dir / "two")),
                 &out);
  INFO(out);
  REQUIRE(rc == 0);
  REQUIRE(out.find("[rank 1]") != std::string::npos);
  DdpJobResult one = read_ddp_job(dir / "one"), two = read_ddp_job(dir / "two");
  require_same_job(two, one);

  std::ifstream in(dir / "two" / "metrics.jsonl");
  std::string line;
  std::getline(in, line);
  auto record = nlohmann::json::parse(line);
  REQUIRE(record["world_size"] == 2);
  REQUIRE(record["comm_ms"].get<double>() >= 0);
  REQUIRE(record["exposed_comm_ms"].get<double>() >= 0);
  fs::remove_all(dir);
}

TEST_CASE("two launchers of 2 ranks form one job that trains like one process", "[e2e][ddp]") {
  if (!have_data()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  fs::path dir = fs::temp_directory_path() / fmt::format("tandem_2node_{}", fresh_seed());
  std::string out;
  REQUIRE(shell(binary() + ddp_job_args(64, dir / "one"), &out) == 0);
  int port = free_port();
  std::string launch = fmt::format("TANDEM_JOB_TOKEN=test-token-{} timeout 60 {} launch --nnodes 2 --nproc-per-node 2 "
                                   "--master-addr 127.0.0.1 --master-port {} --node-rank ",
                                   port, binary(), port);
  std::string out1;
  int rc1 = -1;
  std::thread node1([&] { rc1 = shell(launch + "1 -- " + binary() + ddp_job_args(16, dir / "node1"), &out1); });
  int rc0 = shell(launch + "0 -- " + binary() + ddp_job_args(16, dir / "four"), &out);
  node1.join();
  INFO(out << "\n--- node 1:\n" << out1);
  REQUIRE(rc0 == 0);
  REQUIRE(rc1 == 0);
  REQUIRE(out1.find("[rank 3]") != std::string::npos);
  require_same_job(read_ddp_job(dir / "four"), read_ddp_job(dir / "one"));
  fs::remove_all(dir);
}

TEST_CASE("a launched rank with a different model stops the job with one clear line", "[e2e][ddp]") {
  if (!have_data()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  // Rank 1 builds a wider hidden layer than rank 0.
  std::string cmd = fmt::format(
      "timeout 60 {} launch --nproc-per-node 2 --master-port 0 -- sh -c '{} train --config {} --set max_steps=5 "
      "--set mlp.hidden=[$((32 + RANK))]'",
      binary(), binary(), config());
  std::string out;
  auto start = std::chrono::steady_clock::now();
  int rc = shell(cmd, &out);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(out);
  REQUIRE(rc == 2);
  REQUIRE(out.find("rank 1's model differs from rank 0's") != std::string::npos);
  REQUIRE(out.find("layers.0.weight [32, 784]") != std::string::npos);
  REQUIRE(seconds < 30);  // fails fast, never waits for a collective timeout
}
