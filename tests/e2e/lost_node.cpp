// Lost nodes (Note [Lost nodes] in tools/launcher.h) with two launchers of a
// --nnodes 2 job on this machine and --node-timeout 3: node 1's launcher
// killed with SIGKILL is named by node 0 within 2 x the timeout; node 0's
// launcher (whose thread serves the store) stopped with SIGSTOP makes node 1
// stop its workers and exit within 2 x the timeout, naming the store. Each
// case takes about the timeout; every launcher is killed and reaped at the
// end, and every worker it started must be gone.
#include <signal.h>
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <regex>
#include <string>
#include <thread>

#include "support/process.h"
#include "support/testing.h"

using namespace tandem::testing;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kNodeTimeout = 3;               // s, --node-timeout
constexpr double kBound = 2.0 * kNodeTimeout;  // what the launcher promises
constexpr double kStartBound = 20;             // s, for both launchers to start their workers

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

Clock::time_point after(Clock::time_point t, double seconds) {
  return t + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

// One node's `tandem launch` with two workers that print their pid and
// sleep; `extra` flags added.
std::string launch_command(int rank, const std::string& token, int port, const std::string& extra) {
  std::string clear;
  for (const char* var : {"SLURM_NNODES", "SLURM_JOB_NUM_NODES", "SLURM_NODEID", "SLURM_NTASKS_PER_NODE",
                          "SLURM_GPUS_ON_NODE", "SLURM_JOB_NODELIST", "SLURM_NODELIST"})
    clear += fmt::format("-u {} ", var);
  return fmt::format(
      "env {}TANDEM_JOB_TOKEN={} {} launch --nnodes 2 --node-rank {} --master-port {} --nproc-per-node 2 "
      "--node-timeout {} {} -- sh -c 'echo pid $$; exec sleep 60'",
      clear, token, tandem_binary(), rank, port, kNodeTimeout, extra);
}

// Two launchers of one job (`extra` flags on both), once all four workers
// have said "pid".
struct Job {
  explicit Job(const std::string& extra) : logs(temp_dir("lost_node")) {
    std::string token = fmt::format("test-{}", fresh_seed());
    int port = free_port();
    for (int i : {0, 1})
      nodes[i].emplace(launch_command(i, token, port, extra), logs / fmt::format("node{}.log", i));
    auto deadline = after(Clock::now(), kStartBound);
    for (int i : {0, 1}) {
      INFO(outputs());
      REQUIRE(nodes[i]->await(std::regex(R"(\] pid \d+\n)"), deadline, 2));
    }
  }
  std::string outputs() const {
    return fmt::format("--- node 0:\n{}\n--- node 1:\n{}", nodes[0]->output(), nodes[1]->output());
  }
  ~Job() {
    for (auto& node : nodes) node.reset();  // killed and reaped before their logs go
    fs::remove_all(logs);
  }
  fs::path logs;
  std::optional<BackgroundProcess> nodes[2];
};

}  // namespace

TEST_CASE("node 0 names a node whose launcher was killed within 2 x --node-timeout", "[e2e][lost_node]") {
  Job job("--max-restarts 1");
  std::vector<pid_t> workers = announced_pids(job.outputs());
  REQUIRE(kill(job.nodes[1]->pid(), SIGKILL) == 0);
  auto killed = Clock::now();
  auto deadline = after(killed, kBound + kNodeTimeout);
  std::optional<Clock::time_point> named = job.nodes[0]->await(
      std::regex(fmt::format(R"(tandem launch: node 1 lost: no heartbeat from its launcher \(pid {} on [^)]+\) for )"
                             R"([\d.]+ s \(--node-timeout {}\))",
                             job.nodes[1]->pid(), kNodeTimeout)),
      deadline);
  std::optional<int> code = job.nodes[0]->wait_until(deadline);
  INFO(job.outputs());
  REQUIRE(named.has_value());
  REQUIRE(code.has_value());
  double detected = seconds_between(killed, *named), exited = seconds_between(killed, job.nodes[0]->exited());
  WARN(fmt::format("node 0 named the lost node {:.2f} s and exited {:.2f} s after node 1's launcher was killed "
                   "(bound {} s)",
                   detected, exited, kBound));
  REQUIRE(detected <= kBound);
  REQUIRE(exited <= kBound);
  REQUIRE(*code == 1);
  // A lost node cannot come back: no restart, though one was allowed.
  REQUIRE(!contains(job.nodes[0]->output(), "restarting"));
  REQUIRE(workers.size() == 4);
  for (pid_t pid : workers) REQUIRE(gone(pid));  // node 1's went with their launcher (PR_SET_PDEATHSIG)
}

TEST_CASE("node 1 exits within 2 x --node-timeout when the store stops answering, naming it", "[e2e][lost_node]") {
  Job job("");
  std::vector<pid_t> workers = announced_pids(job.outputs());
  // Node 0's launcher serves the store from a thread of its own: stopped,
  // it keeps the connections open and answers nothing.
  REQUIRE(kill(job.nodes[0]->pid(), SIGSTOP) == 0);
  auto stopped = Clock::now();
  std::optional<int> code = job.nodes[1]->wait_until(after(stopped, kBound + kNodeTimeout));
  std::string out = job.nodes[1]->output();
  INFO(job.outputs());
  REQUIRE(code.has_value());
  double exited = seconds_between(stopped, job.nodes[1]->exited());
  WARN(fmt::format("node 1 exited {:.2f} s after node 0's launcher was stopped (bound {} s)", exited, kBound));
  REQUIRE(exited <= kBound);
  REQUIRE(*code == 1);
  std::regex named(fmt::format(R"(tandem launch: lost the store at 127\.0\.0\.1:\d+: no reply within [\d.]+ s )"
                               R"(\(--node-timeout {}\))",
                               kNodeTimeout));
  REQUIRE(std::regex_search(out, named));
  for (pid_t pid : announced_pids(out)) REQUIRE(gone(pid));
  kill(job.nodes[0]->pid(), SIGKILL);
  REQUIRE(job.nodes[0]->wait_until(Clock::now() + std::chrono::seconds(5)) == 128 + SIGKILL);
  REQUIRE(workers.size() == 4);
  for (pid_t pid : workers) REQUIRE(gone(pid));
}

TEST_CASE("launchers with different --node-timeout refuse to start", "[e2e][lost_node]") {
  std::string env = fmt::format(
      "env -u SLURM_NNODES -u SLURM_JOB_NUM_NODES -u SLURM_NODEID -u SLURM_NTASKS_PER_NODE -u SLURM_GPUS_ON_NODE "
      "-u SLURM_JOB_NODELIST -u SLURM_NODELIST TANDEM_JOB_TOKEN=test-{}",
      fresh_seed());
  std::string launch = fmt::format("{} timeout 20 {} launch --nnodes 2 --master-port {}", env, tandem_binary(),
                                   free_port());
  ShellResult r = run_shell(fmt::format(
      "({0} --node-rank 1 --node-timeout 5 -- true & {0} --node-rank 0 -- true; a=$?; wait $!; echo codes $a $?) 2>&1",
      launch));
  INFO(r.output);
  REQUIRE(contains(r.output, "codes 2 2"));
  REQUIRE(contains(r.output, "--node-timeout 30 but node 1 has 5; every node needs the same"));
  REQUIRE(contains(r.output, "--node-timeout 5 but node 0 has 30; every node needs the same"));
}
