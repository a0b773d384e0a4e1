// Ranks started by hand, without `tandem launch`, as torchrun users start
// `torch.distributed` env:// jobs: each process gets RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT and TANDEM_JOB_TOKEN, and rank 0 serves the
// store (Note [Rank 0 serves the store] in runtime/parallel/process_group.h).
// Such a job must train like one process with twice the batch, whichever
// rank starts first; a rank with a wrong or no token, and a rank 0 whose
// port is taken, get one clear line. Every process runs under a deadline.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "support/ddp_job.h"
#include "support/process.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kDeadline = std::chrono::seconds(60);

std::string config() { return source_path("models/mlp/fashion.toml"); }

// The environment of rank `rank` of 2 started by hand; `token` empty: none.
// TANDEM_RESTART_COUNT is what tells a rank it runs under the launcher, so
// it must not leak in from the environment of the test.
std::string by_hand(int rank, int port, const std::string& token) {
  std::string token_env = token.empty() ? "-u TANDEM_JOB_TOKEN" : "TANDEM_JOB_TOKEN=" + token;
  return fmt::format("env -u TANDEM_RESTART_COUNT -u TANDEM_BACKEND {} RANK={} LOCAL_RANK={} WORLD_SIZE=2 "
                     "MASTER_ADDR=127.0.0.1 MASTER_PORT={} OMP_NUM_THREADS=1 timeout 60 {}",
                     token_env, rank, rank, port, tandem_binary());
}

bool have_data() { return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"); }

// Starts both ranks (rank 1 `head_start` before rank 0) and requires both to succeed.
void run_job(const fs::path& dir, std::chrono::milliseconds head_start) {
  fs::create_directories(dir);
  int port = free_port();
  std::string token = fmt::format("by-hand-{}", fresh_seed());
  auto deadline = Clock::now() + kDeadline;
  BackgroundProcess rank1(by_hand(1, port, token) + ddp_job_args(32, dir), dir / "rank1.log");
  std::this_thread::sleep_for(head_start);
  INFO("rank 1 so far:\n" << rank1.output());
  REQUIRE(rank1.running());  // still retrying the store, not failed
  BackgroundProcess rank0(by_hand(0, port, token) + ddp_job_args(32, dir), dir / "rank0.log");
  std::optional<int> rc0 = rank0.wait_until(deadline), rc1 = rank1.wait_until(deadline);
  INFO("rank 0:\n" << rank0.output() << "\n--- rank 1:\n" << rank1.output());
  REQUIRE(rc0 == 0);
  REQUIRE(rc1 == 0);
  REQUIRE(rank0.output().find(fmt::format("rank 0 serves the store on 127.0.0.1:{}", port)) != std::string::npos);
  REQUIRE(rank1.output().find("serves the store") == std::string::npos);
  // Rank 0 kept the store until rank 1 was done with it.
  REQUIRE(rank0.output().find("stops serving the store") == std::string::npos);
  REQUIRE(rank1.output().find("could not tell rank 0") == std::string::npos);
}

}  // namespace

TEST_CASE("2 ranks started by hand train like one process with twice the batch, whichever starts first",
          "[e2e][ddp][by_hand]") {
  if (!have_data()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  fs::path dir = fs::temp_directory_path() / fmt::format("tandem_by_hand_{}", fresh_seed());
  ShellResult one = run_shell(tandem_binary() + ddp_job_args(64, dir / "one") + " 2>&1");
  INFO(one.output);
  REQUIRE(one.exit_code == 0);
  DdpJobResult expected = read_ddp_job(dir / "one");

  {
    INFO("started together");
    run_job(dir / "together", std::chrono::milliseconds(0));
    require_same_job(read_ddp_job(dir / "together"), expected);
  }
  {
    INFO("rank 1 started two seconds before rank 0");
    run_job(dir / "rank1_first", std::chrono::milliseconds(2000));
    require_same_job(read_ddp_job(dir / "rank1_first"), expected);
  }
  fs::remove_all(dir);
}

TEST_CASE("a rank started by hand with a wrong or no job token is refused with one clear line", "[e2e][by_hand]") {
  fs::path dir = temp_dir("by_hand_token");
  int port = free_port();
  // Rank 0 gives up on the missing rank after comm_timeout.
  BackgroundProcess rank0(by_hand(0, port, "right-token") + " train --config " + config() +
                              " --set max_steps=2 --set comm_timeout=3",
                          dir / "rank0.log");

  ShellResult wrong = run_shell(by_hand(1, port, "wrong-token") + " train --config " + config() + " 2>&1");
  INFO(wrong.output);
  REQUIRE(wrong.exit_code == 2);
  REQUIRE(wrong.output.find(fmt::format("the store at 127.0.0.1:{} refused this job token; check TANDEM_JOB_TOKEN",
                                        port)) != std::string::npos);
  REQUIRE(wrong.seconds < 20);  // refused at once, never waits out a timeout

  ShellResult none = run_shell(by_hand(1, port, "") + " train --config " + config() + " 2>&1");
  INFO(none.output);
  REQUIRE(none.exit_code == 2);
  REQUIRE(none.output.find("TANDEM_JOB_TOKEN is not set") != std::string::npos);

  std::optional<int> rc0 = rank0.wait_until(Clock::now() + kDeadline);
  INFO("rank 0:\n" << rank0.output());
  REQUIRE(rc0.has_value());
  REQUIRE(*rc0 != 0);
  REQUIRE(rank0.output().find("ranks that have not arrived: 1") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("rank 0 started by hand on a port in use names the port", "[e2e][by_hand]") {
  // Hold a port the way another job's store would.
  auto [fd, port] = hold_port();

  ShellResult r = run_shell(by_hand(0, port, "some-token") + " train --config " + config() + " 2>&1");
  close(fd);
  INFO(r.output);
  REQUIRE(r.exit_code == 2);
  REQUIRE(r.output.find(fmt::format("MASTER_PORT {}: the store cannot listen on 127.0.0.1:{}", port, port)) !=
          std::string::npos);
  REQUIRE(r.output.find("export a free MASTER_PORT on every rank") != std::string::npos);
}
