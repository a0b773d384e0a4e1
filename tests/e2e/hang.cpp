// No hangs, end to end: a 3-rank `tandem launch ... tandem train` job (gloo)
// whose rank 1 is stopped (SIGSTOP) or killed (SIGKILL) once training runs.
// The stopped case must end through the watchdogs (Note [Watchdog] in
// collectives/watchdog.h): each surviving rank, 0 and 2, reports the stuck
// collective and names rank 1 within twice comm_timeout (the launcher waits
// for the others' reports before it stops them, Note [Stopping workers] in
// tools/launcher.h). The killed case ends through the launcher, naming rank
// 1's signal. Workers are found by a marker in their command line (the
// metrics path) and RANK in their environment; every command runs under
// `timeout 60` and leftovers are killed.
#include <signal.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
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
constexpr int kRanks = 3;  // two survivors, each of which must report

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
        "env -u TANDEM_JOB_TOKEN -u SLURM_NNODES -u SLURM_JOB_NUM_NODES timeout 60 {0} launch --nproc-per-node {5} "
        "--backend gloo --master-port 0 -- {0} train --config {1}/models/mlp/fashion.toml --set comm_timeout={2} "
        "--set mlp.hidden=[32] --set max_steps=100000 --set eval_every=1000000 --set log_every=10 "
        "--metrics-out {3} > {4}/out 2>&1; echo $? > {4}/rc",
        tandem_binary(), source, kCommTimeoutS, marker, dir.string(), kRanks);
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

  std::string output() { return read_file(dir / "out"); }

  // Rank `rank`'s watchdog line, as the launcher forwards it ("" if none yet).
  std::string watchdog_line(int rank) {
    std::istringstream out(output());
    for (std::string line; std::getline(out, line);)
      if (line.starts_with(fmt::format("[rank {}] ", rank)) && line.find("watchdog: gloo ") != std::string::npos)
        return line;
    return "";
  }

  // Seconds from `since` until rank `rank` reported (60 at most).
  double wait_report(int rank, Clock::time_point since) {
    Clock::time_point deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline && watchdog_line(rank).empty())
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return std::chrono::duration<double>(Clock::now() - since).count();
  }
};

}  // namespace

TEST_CASE("a stopped rank: every other rank's watchdog names it and the job ends non-zero", "[e2e][hang]") {
  if (!have_data()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  Job job;
  int pids[kRanks];
  for (int r = 0; r < kRanks; r++) pids[r] = job.worker_pid(r);
  Clock::time_point stopped = Clock::now();
  REQUIRE(kill(pids[1], SIGSTOP) == 0);
  double reported[kRanks] = {};
  for (int r : {0, 2}) reported[r] = job.wait_report(r, stopped);
  // The launcher continues the stopped rank along with its SIGTERM, so the
  // whole job ends soon after the reports, not after the SIGKILL grace.
  double total = 0;
  int rc = job.wait_exit(stopped, &total);
  std::string out = job.output();
  INFO(out);
  REQUIRE(rc == 124);  // a watchdog's exit, passed on by the launcher
  REQUIRE(total < 2 * kCommTimeoutS + 4);
  REQUIRE(out.find("exited with code 124") != std::string::npos);
  for (int r : {0, 2}) {
    std::string line = job.watchdog_line(r);
    INFO("rank " << r << ": " << line);
    REQUIRE(reported[r] < 2 * kCommTimeoutS);
    // The collective (op, sequence number, size), the rank reporting, and
    // rank 1 as the one that has not issued it or has stopped.
    std::regex stuck(fmt::format(R"(watchdog: gloo (all_reduce|broadcast) #\d+ \(\d+ bytes, group of {}\) stuck for )"
                                 R"([\d.]+ s on rank {};)",
                                 kRanks, r));
    REQUIRE(std::regex_search(line, stuck));
    REQUIRE((line.find("rank 1 (last issued #") != std::string::npos ||
             line.find("from rank 1 (stopped, or its process hangs)") != std::string::npos));
  }
  for (int pid : pids) REQUIRE(gone(pid));
}

TEST_CASE("a killed rank: the launcher ends the job promptly, naming rank 1's signal", "[e2e][hang]") {
  if (!have_data()) {
    WARN("SKIPPED: Fashion-MNIST is not installed (run tools/setup.sh)");
    return;
  }
  Job job;
  int pids[kRanks];
  for (int r = 0; r < kRanks; r++) pids[r] = job.worker_pid(r);
  REQUIRE(kill(pids[1], SIGKILL) == 0);
  double seconds = 0;
  int rc = job.wait_exit(Clock::now(), &seconds);
  std::string out = job.output();
  INFO(out);
  REQUIRE(rc == 128 + SIGKILL);
  REQUIRE(seconds < kCommTimeoutS + 4);
  REQUIRE(std::regex_search(out, std::regex(R"(tandem launch: rank 1 \(pid \d+\) killed by signal SIGKILL\n$)")));
  // A survivor that saw the dead peer's connection reset says so as an
  // error of the job, not as a bug of its own.
  REQUIRE(out.find("internal error") == std::string::npos);
  for (int pid : pids) REQUIRE(gone(pid));
}
