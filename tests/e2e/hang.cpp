// No hangs, end to end: a 2-rank `tandem launch ... tandem train` job whose
// rank 1 is stopped (SIGSTOP) or killed (SIGKILL) once training runs. The
// stopped case must end through rank 0's watchdog (Note [Watchdog] in
// collectives/watchdog.h) within about twice comm_timeout; the killed case
// through the launcher, naming rank 1's signal. Workers are found by a
// marker in their command line (the metrics path) and RANK in their
// environment; every command runs under `timeout 60` and leftovers are killed.
#include <signal.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "support/process.h"
#include "support/testing.h"

using namespace tandem::testing;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kCommTimeoutS = 3;

bool have_data() { return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"); }

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A training job that would run for long, started in the background.
struct Job {
  fs::path dir;
  std::string marker;  // in every worker's command line
  Clock::time_point started;

  Job() {
    dir = fs::temp_directory_path() / fmt::format("tandem-hang-{}-{}", getpid(), std::rand());
    fs::create_directories(dir);
    marker = (dir / "m.jsonl").string();
    std::string source = std::getenv("TANDEM_SOURCE_DIR") ? std::getenv("TANDEM_SOURCE_DIR") : ".";
    std::string cmd = fmt::format(
        "env -u TANDEM_JOB_TOKEN -u SLURM_NNODES -u SLURM_JOB_NUM_NODES timeout 60 {0} launch --nproc-per-node 2 "
        "--master-port 0 -- {0} train --config {1}/models/mlp/fashion.toml --set comm_timeout={2} "
        "--set mlp.hidden=[32] --set max_steps=100000 --set eval_every=1000000 --set log_every=10 "
        "--metrics-out {3} > {4}/out 2>&1; echo $? > {4}/rc",
        tandem_binary(), source, kCommTimeoutS, marker, dir.string());
    started = Clock::now();
    REQUIRE(run_shell("(" + cmd + ") > /dev/null 2>&1 &").exit_code == 0);
  }

  ~Job() {  // whatever is left: continue it (a stopped process ignores SIGTERM) and kill it
    run_shell(fmt::format("for p in $(pgrep -f '{0}'); do kill -CONT $p; kill -KILL $p; done 2>/dev/null", marker));
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }

  // The pid of the worker with RANK=`rank`, once training has logged a step.
  int worker_pid(int rank) {
    Clock::time_point deadline = Clock::now() + std::chrono::seconds(30);
    while (Clock::now() < deadline && !fs::exists(dir / "rc")) {
      if (fs::exists(marker) && fs::file_size(marker) > 0) {
        ShellResult r = run_shell(fmt::format(
            "for p in $(pgrep -f '{}'); do tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | grep -qx 'RANK={}' && "
            "grep -q train /proc/$p/cmdline && echo $p; done",
            marker, rank));
        if (int pid = std::atoi(r.output.c_str()); pid > 0) return pid;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL("training did not start: " + read_file(dir / "out"));
    return -1;
  }

  // The launcher's exit code, once it exited; seconds since `since`.
  int wait_exit(Clock::time_point since, double* seconds) {
    Clock::time_point deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline && read_file(dir / "rc").empty())
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    *seconds = std::chrono::duration<double>(Clock::now() - since).count();
    std::string rc = read_file(dir / "rc");
    REQUIRE(!rc.empty());
    return std::atoi(rc.c_str());
  }

  // Seconds from `since` until the output holds `text` (60 at most).
  double wait_output(const std::string& text, Clock::time_point since) {
    Clock::time_point deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline && output().find(text) == std::string::npos)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return std::chrono::duration<double>(Clock::now() - since).count();
  }

  std::string output() { return read_file(dir / "out"); }
};

}  // namespace

TEST_CASE("a stopped rank: rank 0's watchdog names it and the job ends non-zero", "[e2e][hang]") {
  if (!have_data()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  Job job;
  int pid = job.worker_pid(1);
  Clock::time_point stopped = Clock::now();
  REQUIRE(kill(pid, SIGSTOP) == 0);
  // Rank 0's watchdog line, as the launcher forwards it.
  double seconds = job.wait_output("watchdog: gloo ", stopped);
  // The launcher continues the stopped rank along with its SIGTERM, so the
  // whole job ends soon after the report, not after the SIGKILL grace.
  double total = 0;
  int rc = job.wait_exit(stopped, &total);
  std::string out = job.output();
  INFO(out);
  REQUIRE(rc != 0);
  REQUIRE(seconds < 2 * kCommTimeoutS);
  REQUIRE(total < 2 * kCommTimeoutS + 4);
  size_t at = out.find("watchdog: gloo ");
  REQUIRE(at != std::string::npos);
  std::string line = out.substr(at, out.find('\n', at) - at);
  INFO(line);
  REQUIRE(line.find("on rank 0;") != std::string::npos);
  REQUIRE(line.find("rank 1") != std::string::npos);
  REQUIRE(out.find("exited with code 124") != std::string::npos);
}

TEST_CASE("a killed rank: the launcher ends the job promptly, naming rank 1's signal", "[e2e][hang]") {
  if (!have_data()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  Job job;
  int pid = job.worker_pid(1);
  REQUIRE(kill(pid, SIGKILL) == 0);
  double seconds = 0;
  int rc = job.wait_exit(Clock::now(), &seconds);
  std::string out = job.output();
  INFO(out);
  REQUIRE(rc != 0);
  REQUIRE(seconds < kCommTimeoutS + 4);
  REQUIRE(out.find("killed by signal SIGKILL") != std::string::npos);
}
