// `tandem launch --max-restarts K` as a user runs it: a failed worker
// (an exit code or a signal) restarts the whole job with
// TANDEM_RESTART_COUNT counting up, one line per restart; restarts used up
// end the job with its first failure; a signal to the launcher ends it at
// once; two launchers restart together. Every command runs under
// `timeout 30`, and every test checks that the workers it started are gone.
#include <signal.h>
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <sstream>
#include <thread>

#include "support/process.h"
#include "support/testing.h"

using namespace tandem::testing;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

// `timeout 30 tandem launch ARGS` with what the launcher reads from its
// environment cleared, plus `env` ("NAME=value ...").
std::string launch(const std::string& args, const std::string& env = "") {
  std::string clear;
  for (const char* var : {"SLURM_NNODES", "SLURM_JOB_NUM_NODES", "SLURM_NODEID", "SLURM_NTASKS_PER_NODE",
                          "SLURM_GPUS_ON_NODE", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "TANDEM_JOB_TOKEN"})
    clear += fmt::format("-u {} ", var);
  return fmt::format("env {}{} timeout 30 {} launch {}", clear, env, tandem_binary(), args);
}

// Two launchers (node 1 in the background) with `args` each; the output
// ends with "codes <node 0's exit> <node 1's exit>".
std::string two_nodes(const std::string& args) {
  std::string env = fmt::format("TANDEM_JOB_TOKEN=test-{}", fresh_seed());
  int port = free_port();
  std::string common = fmt::format("--nnodes 2 --master-port {} {}", port, args);
  return fmt::format("({} & {}; a=$?; wait $!; echo codes $a $?) 2>&1", launch("--node-rank 1 " + common, env),
                     launch("--node-rank 0 " + common, env));
}

size_t count(const std::string& text, const std::string& pattern) {
  std::regex re(pattern);
  return static_cast<size_t>(std::distance(std::sregex_iterator(text.begin(), text.end(), re), std::sregex_iterator()));
}

bool has_line(const std::string& text, const std::string& line) {
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (l == line) return true;
  return false;
}

void require_all_gone(const std::string& output, size_t expected) {
  std::vector<pid_t> pids = announced_pids(output);
  REQUIRE(pids.size() == expected);
  for (pid_t pid : pids) REQUIRE(gone(pid));
}

// A script that runs `start` (launchers in the background, their output
// in a file), waits (10 s at most) until `workers` workers have said
// "pid", runs `then`, and prints the file.
std::string until_started(int workers, const std::string& start, const std::string& then) {
  return fmt::format(
      "f=$(mktemp); exec 4>&1 >\"$f\" 2>&1; {}; i=0; while [ $(grep -c ' pid ' \"$f\") -lt {} ] && [ $i -lt 200 ]; "
      "do sleep 0.05; i=$((i+1)); done; {}; exec >&4 2>&1; cat \"$f\"; rm -f \"$f\"",
      start, workers, then);
}

// Rank 1 fails (exit 3) on attempts 0 and 1; rank 0 waits to be stopped
// there; both succeed on attempt 2.
const char* kFailTwice =
    "-- sh -c 'echo attempt $TANDEM_RESTART_COUNT of $TANDEM_MAX_RESTARTS pid $$; "
    "if [ \"$TANDEM_RESTART_COUNT\" -lt 2 ]; then if [ $RANK = 1 ]; then sleep 0.3; exit 3; fi; exec sleep 30; fi'";

}  // namespace

TEST_CASE("--max-restarts 2 restarts the job until an attempt succeeds", "[e2e][restart]") {
  ShellResult r = run_shell(launch(std::string("--nproc-per-node 2 --master-port 0 --max-restarts 2 ") + kFailTwice) +
                            " 2>&1");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  REQUIRE(r.seconds < 15);
  for (int restart = 1; restart <= 2; restart++)
    REQUIRE(count(r.output, fmt::format(R"(tandem launch: rank 1 \(pid \d+\) exited with code 3; restarting the job )"
                                        R"(\(restart {} of 2\)\n)",
                                        restart)) == 1);
  REQUIRE(count(r.output, "restarting the job") == 2);
  for (int rank = 0; rank < 2; rank++)
    for (int attempt = 0; attempt <= 2; attempt++)
      REQUIRE(count(r.output, fmt::format(R"(\[rank {}\] attempt {} of 2 pid \d+\n)", rank, attempt)) == 1);
  require_all_gone(r.output, 6);
}

TEST_CASE("restarts used up end the job with its first failure", "[e2e][restart]") {
  ShellResult r = run_shell(launch(std::string("--nproc-per-node 2 --master-port 0 --max-restarts 1 ") + kFailTwice) +
                            " 2>&1");
  INFO(r.output);
  REQUIRE(r.exit_code == 3);
  REQUIRE(count(r.output, R"(restarting the job \(restart 1 of 1\))") == 1);
  REQUIRE(count(r.output, "restarting the job") == 1);
  REQUIRE(count(r.output, R"(\[rank \d\] attempt 2)") == 0);
  // The last line names attempt 0's failure: the pid the restart line named.
  std::smatch first;
  REQUIRE(std::regex_search(r.output, first, std::regex(R"(rank 1 \(pid (\d+)\) exited with code 3; restarting)")));
  REQUIRE(r.output.ends_with(fmt::format("tandem launch: rank 1 (pid {}) exited with code 3\n", first[1].str())));
  REQUIRE(count(r.output, R"(no restarts left \(--max-restarts 1\))") == 1);
  require_all_gone(r.output, 4);
}

TEST_CASE("a worker killed by SIGKILL restarts the job", "[e2e][restart]") {
  ShellResult r = run_shell(launch("--nproc-per-node 2 --master-port 0 --max-restarts 1 -- sh -c "
                                   "'echo attempt $TANDEM_RESTART_COUNT pid $$; if [ $TANDEM_RESTART_COUNT = 0 ]; then "
                                   "if [ $RANK = 0 ]; then sleep 0.3; kill -KILL $$; fi; exec sleep 30; fi'") +
                            " 2>&1");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  REQUIRE(count(r.output, R"(tandem launch: rank 0 \(pid \d+\) killed by signal SIGKILL; restarting the job )"
                          R"(\(restart 1 of 1\))") == 1);
  REQUIRE(count(r.output, R"(\[rank \d\] attempt 1 pid)") == 2);
  require_all_gone(r.output, 4);
}

TEST_CASE("without --max-restarts a failure is not restarted and workers see 0 restarts", "[e2e][restart]") {
  ShellResult r = run_shell(
      launch("--master-port 0 -- sh -c 'echo count $TANDEM_RESTART_COUNT max $TANDEM_MAX_RESTARTS; exit 6'") +
      " 2>&1");
  INFO(r.output);
  REQUIRE(r.exit_code == 6);
  REQUIRE(has_line(r.output, "[rank 0] count 0 max 0"));
  REQUIRE(count(r.output, "restart") == 0);
}

TEST_CASE("a signal to the launcher ends the job without a restart", "[e2e][restart]") {
  ShellResult r = run_shell(until_started(2, fmt::format("{} & pid=$!", launch("--nproc-per-node 2 --master-port 0 "
                                                                               "--max-restarts 3 -- sh -c 'echo attempt "
                                                                               "$TANDEM_RESTART_COUNT pid $$; exec sleep 30'")),
                                          "kill -TERM $pid; wait $pid; echo code $?"));
  INFO(r.output);
  REQUIRE(has_line(r.output, "code 143"));
  REQUIRE(r.seconds < 8);
  REQUIRE(count(r.output, "restarting") == 0);
  REQUIRE(count(r.output, "tandem launch: received SIGTERM; stopped the workers") == 1);
  require_all_gone(r.output, 2);
}

TEST_CASE("two launchers restart together when a worker on node 1 fails", "[e2e][restart]") {
  // Attempt 0: node 0's workers succeed at once (its launcher waits for the
  // job, then joins the restart), rank 2 runs until stopped, rank 3 fails.
  ShellResult r = run_shell(two_nodes(
      "--nproc-per-node 2 --max-restarts 2 -- sh -c 'echo ran $RANK $TANDEM_RESTART_COUNT pid $$; "
      "if [ $TANDEM_RESTART_COUNT = 0 ]; then if [ $RANK = 3 ]; then sleep 1; exit 4; fi; "
      "if [ $RANK = 2 ]; then exec sleep 30; fi; fi'"));
  INFO(r.output);
  REQUIRE(has_line(r.output, "codes 0 0"));
  REQUIRE(r.seconds < 20);
  for (int rank = 0; rank < 4; rank++)
    for (int attempt = 0; attempt < 2; attempt++)
      REQUIRE(count(r.output, fmt::format(R"(\[rank {}\] ran {} {} pid)", rank, rank, attempt)) == 1);
  REQUIRE(count(r.output, R"(\[rank \d\] ran \d 2)") == 0);
  // Each launcher names the one failure (with its host) once.
  REQUIRE(count(r.output, R"(tandem launch: rank 3 \(pid \d+ on [^)]+\) exited with code 4; restarting the job )"
                          R"(\(restart 1 of 2\))") == 2);
  require_all_gone(r.output, 8);
}

TEST_CASE("two launchers that used up their restarts both exit with the first failure", "[e2e][restart]") {
  ShellResult r = run_shell(two_nodes("--nproc-per-node 1 --max-restarts 1 -- sh -c "
                                      "'echo ran $RANK $TANDEM_RESTART_COUNT pid $$; "
                                      "if [ $RANK = 1 ]; then sleep 0.5; exit 5; fi; exec sleep 30'"));
  INFO(r.output);
  REQUIRE(has_line(r.output, "codes 5 5"));
  REQUIRE(r.seconds < 20);
  REQUIRE(count(r.output, R"(restarting the job \(restart 1 of 1\))") == 2);
  REQUIRE(count(r.output, R"(no restarts left)") == 2);
  std::smatch first;
  REQUIRE(std::regex_search(r.output, first, std::regex(R"(rank 1 \(pid (\d+) on [^)]+\) exited with code 5; rest)")));
  REQUIRE(count(r.output, fmt::format(R"(tandem launch: rank 1 \(pid {} on [^)]+\) exited with code 5\n)",
                                      first[1].str())) == 2);
  require_all_gone(r.output, 4);
}

TEST_CASE("a signal to one of two launchers ends the job on both without a restart", "[e2e][restart]") {
  std::string env = fmt::format("TANDEM_JOB_TOKEN=test-{}", fresh_seed());
  std::string common = fmt::format("--nnodes 2 --nproc-per-node 2 --max-restarts 2 --master-port {} -- sh -c "
                                   "'echo attempt $TANDEM_RESTART_COUNT pid $$; exec sleep 30'",
                                   free_port());
  // `timeout` passes the SIGTERM on to node 1's launcher.
  ShellResult r = run_shell(until_started(4,
                                          fmt::format("{} & one=$!; {} & zero=$!", launch("--node-rank 1 " + common, env),
                                                      launch("--node-rank 0 " + common, env)),
                                          "kill -TERM $one; wait $zero; a=$?; wait $one; echo codes $a $?"));
  INFO(r.output);
  REQUIRE(has_line(r.output, "codes 143 143"));
  REQUIRE(r.seconds < 10);
  REQUIRE(count(r.output, "restart") == 0);
  REQUIRE(count(r.output, R"(tandem launch: the launcher on [^ ]+ \(node 1\) received SIGTERM; stopped its workers\n)") == 2);
  require_all_gone(r.output, 4);
}

TEST_CASE("launchers with different --max-restarts refuse to start", "[e2e][restart]") {
  std::string env = fmt::format("TANDEM_JOB_TOKEN=test-{}", fresh_seed());
  std::string common = fmt::format("--nnodes 2 --master-port {} -- true", free_port());
  ShellResult r = run_shell(fmt::format("({} & {}; a=$?; wait $!; echo codes $a $?) 2>&1",
                                        launch("--node-rank 1 --max-restarts 1 " + common, env),
                                        launch("--node-rank 0 --max-restarts 0 " + common, env)));
  INFO(r.output);
  REQUIRE(has_line(r.output, "codes 2 2"));
  REQUIRE(count(r.output, "every node needs the same") == 2);
}

TEST_CASE("a job launched again continues from its newest checkpoint (--resume auto under the launcher)",
          "[e2e][restart]") {
  fs::path dir = temp_dir("relaunch");
  std::string train = fmt::format("-- {} train --config {} --set eval_every=1000 --set mlp.hidden=[16] --ckpt-every 3 "
                                  "--ckpt-dir {}",
                                  tandem_binary(), source_path("models/mlp/fashion.toml"), (dir / "ckpt").string());
  ShellResult first = run_shell(launch("--master-port 0 " + train + " --set max_steps=6") + " 2>&1");
  INFO(first.output);
  REQUIRE(first.exit_code == 0);
  REQUIRE(first.output.find("resuming") == std::string::npos);  // nothing to resume yet
  ShellResult again = run_shell(launch("--master-port 0 " + train + " --set max_steps=8") + " 2>&1");
  INFO(again.output);
  REQUIRE(again.exit_code == 0);
  REQUIRE(again.output.find("resuming from " + (dir / "ckpt" / "step_00000006").string()) != std::string::npos);
  REQUIRE(again.output.find("\"steps\":8") != std::string::npos);
  // By hand, without the launcher, a run starts fresh unless asked.
  ShellResult by_hand = run_tandem(fmt::format("train --config {} --set eval_every=1000 --set mlp.hidden=[16] "
                                               "--set max_steps=2 --ckpt-dir {}",
                                               source_path("models/mlp/fashion.toml"), (dir / "ckpt").string()));
  INFO(by_hand.output);
  REQUIRE(by_hand.exit_code == 0);
  REQUIRE(by_hand.output.find("resuming") == std::string::npos);
  fs::remove_all(dir);
}
