// `tandem launch` as a user runs it: the torchrun variables, rank-prefixed
// whole lines, the first failure's cause and exit code, signals, a worker
// that ignores SIGTERM (killed after --stop-grace), two launchers forming
// one job, and one clear line for each kind of bad input.
// Every command runs under `timeout 20` or a deadline, and every test checks
// that the workers it started are gone.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "support/process.h"
#include "support/testing.h"

using namespace tandem::testing;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

extern char** environ;

namespace {

using Run = ShellResult;
Run run(const std::string& script) { return run_shell(script); }
std::string tandem() { return tandem_binary(); }

// `timeout 20 tandem launch ARGS` (the bound every command here runs
// under), in an environment cleared of what the launcher reads (so a test
// run inside a Slurm job, or with a token exported, sees what it expects)
// plus `env` ("NAME=value ...").
std::string launch(const std::string& args, const std::string& env = "") {
  std::string clear;
  for (const char* var : {"SLURM_NNODES", "SLURM_JOB_NUM_NODES", "SLURM_NODEID", "SLURM_NTASKS_PER_NODE",
                          "SLURM_GPUS_ON_NODE", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "TANDEM_JOB_TOKEN",
                          "OMP_NUM_THREADS"})
    clear += fmt::format("-u {} ", var);
  return fmt::format("env {}{} timeout 20 {} launch {}", clear, env, tandem(), args);
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

size_t count_lines(const std::string& text, const std::string& line) {
  size_t n = 0;
  for (const auto& l : lines_of(text)) n += l == line ? 1 : 0;
  return n;
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

size_t count_matches(const std::string& text, const std::regex& re) {
  return static_cast<size_t>(std::distance(std::sregex_iterator(text.begin(), text.end(), re), std::sregex_iterator()));
}

// Workers for the --stop-grace tests, on every attempt: rank 0 traps
// SIGTERM (says "got SIGTERM" and carries on) and would run for 30 s; rank
// 1 waits until rank 0's trap is set (a file in `dir`), then exits with 3.
// Each says "pid P attempt A".
std::string ignores_sigterm_workers(const fs::path& dir) {
  return fmt::format(
      "sh -c 'echo pid $$ attempt $TANDEM_RESTART_COUNT; ready={}/ready$TANDEM_RESTART_COUNT; "
      "if [ $RANK = 1 ]; then while [ ! -e $ready ]; do sleep 0.02; done; exit 3; fi; "
      "trap \"echo got SIGTERM\" TERM; touch $ready; i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done'",
      dir.string());
}

// Rank `rank`'s pid on attempt `attempt`, as ignores_sigterm_workers says it.
pid_t pid_of(const std::string& output, int rank, int attempt) {
  std::smatch m;
  std::regex re(fmt::format(R"(\[rank {}\] pid (\d+) attempt {}\n)", rank, attempt));
  return std::regex_search(output, m, re) ? std::stoi(m[1]) : -1;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Whether a process of group `pgid` still runs: a zombie does not count
// (whoever it was reparented to may reap it late).
bool group_running(pid_t pgid) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    std::string stat = read_file(entry.path() / "stat");  // "pid (comm) state ppid pgrp ..."
    size_t paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    char state = 0;
    int ppid = 0, pgrp = 0;
    if (std::sscanf(stat.c_str() + paren + 1, " %c %d %d", &state, &ppid, &pgrp) == 3 && pgrp == pgid &&
        state != 'Z' && state != 'X')
      return true;
  }
  return false;
}

// True once no process of group `pgid` (a worker's group has its pid)
// runs; waits up to 3 s, then kills the group, as gone() does.
bool group_gone(pid_t pgid) {
  auto deadline = Clock::now() + std::chrono::seconds(3);
  while (Clock::now() < deadline) {
    if (!group_running(pgid)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(-pgid, SIGKILL);
  return false;
}

// A launcher in the background, its stdout and stderr in a file; killed
// and reaped on scope exit if the test did not wait for it.
class Background {
 public:
  explicit Background(const std::vector<std::string>& launch_args)
      : out_(fs::temp_directory_path() / fmt::format("tandem_launch_{}.log", fresh_seed())) {
    std::vector<std::string> args = {tandem(), "launch"};
    args.insert(args.end(), launch_args.begin(), launch_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    int rc = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE(rc == 0);
  }
  ~Background() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    fs::remove(out_);
  }
  pid_t pid() const { return pid_; }
  std::string output() const { return read_file(out_); }

  // Waits until the output holds `n` lines containing `needle`.
  bool wait_for(const std::string& needle, size_t n, double seconds = 10) {
    auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < deadline) {
      size_t found = 0;
      for (const auto& l : lines_of(output())) found += contains(l, needle) ? 1 : 0;
      if (found >= n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // The exit code, or -1 when it did not exit within `seconds` (then it is killed).
  int wait_exit(double seconds) {
    auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

 private:
  fs::path out_;
  pid_t pid_ = -1;
};

}  // namespace

TEST_CASE("launch sets the torchrun variables and prefixes each line with its rank", "[e2e][launch]") {
  int port = free_port();
  fs::path err = fs::temp_directory_path() / fmt::format("tandem_launch_err_{}", fresh_seed());
  Run r = run(launch(fmt::format("--nproc-per-node 3 --backend gloo --master-port {} -- sh -c "
                                 "'echo $RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $MASTER_PORT; echo err >&2; "
                                 "echo $GROUP_RANK $MASTER_ADDR $TANDEM_BACKEND ${{TANDEM_JOB_TOKEN:+token}} "
                                 "$OMP_NUM_THREADS'",
                                 port)) +
              " 2>" + err.string());
  std::string errors = read_file(err);
  fs::remove(err);
  INFO(r.output << "\n--- stderr:\n" << errors);
  REQUIRE(r.exit_code == 0);
  for (int rank = 0; rank < 3; rank++) {
    REQUIRE(count_lines(r.output, fmt::format("[rank {}] {} {} 3 3 {}", rank, rank, rank, port)) == 1);
    REQUIRE(count_lines(errors, fmt::format("[rank {}] err", rank)) == 1);
    REQUIRE(count_lines(r.output, fmt::format("[rank {}] 0 127.0.0.1 gloo token 1", rank)) == 1);
  }
  REQUIRE(lines_of(r.output).size() == 6);  // stderr stays on stderr
  REQUIRE(lines_of(errors).size() == 3);
}

TEST_CASE("launch keeps lines whole under heavy output and flushes a last partial line", "[e2e][launch]") {
  // Each rank writes 200 lines of 3000 copies of its digit, then "tail<R>"
  // without a newline; the pipes fill, so reads split lines everywhere.
  Run r = run(launch("--nproc-per-node 3 --master-port 0 -- sh -c "
                     "'awk -v r=$RANK \"BEGIN { s = \\\"\\\"; for (i = 0; i < 3000; i++) s = s r; "
                     "for (j = 0; j < 200; j++) print s }\"; printf tail$RANK'"));
  REQUIRE(r.exit_code == 0);
  std::vector<int> full(3, 0), tails(3, 0);
  for (const auto& line : lines_of(r.output)) {
    INFO(line.substr(0, 80));
    REQUIRE(line.size() > 9);
    REQUIRE(line.starts_with("[rank "));
    int rank = line[6] - '0';
    REQUIRE((rank >= 0 && rank < 3));
    REQUIRE(line.substr(7, 2) == "] ");
    std::string body = line.substr(9);
    if (body == fmt::format("tail{}", rank)) {
      tails[rank]++;
    } else {
      REQUIRE(body == std::string(3000, static_cast<char>('0' + rank)));
      full[rank]++;
    }
  }
  REQUIRE(full == std::vector<int>{200, 200, 200});
  REQUIRE(tails == std::vector<int>{1, 1, 1});
}

TEST_CASE("launch stops the others when a worker fails and exits with its code", "[e2e][launch]") {
  Run r = run(launch("--nproc-per-node 3 --master-port 0 -- sh -c "
                     "'if [ $RANK = 1 ]; then sleep 1; exit 7; fi; echo pid $$; exec sleep 30'") +
              " 2>&1");
  INFO(r.output);
  REQUIRE(r.exit_code == 7);
  REQUIRE(r.seconds < 8);
  REQUIRE(std::regex_search(r.output, std::regex(R"(tandem launch: rank 1 \(pid \d+\) exited with code 7)")));
  std::vector<pid_t> pids = announced_pids(r.output);
  REQUIRE(pids.size() == 2);
  for (pid_t pid : pids) REQUIRE(gone(pid));
}

TEST_CASE("launch reports a worker killed by a signal as 128 + signal", "[e2e][launch]") {
  Run r = run(launch("--nproc-per-node 2 --master-port 0 -- sh -c "
                     "'if [ $RANK = 0 ]; then sleep 0.5; kill -KILL $$; fi; echo pid $$; exec sleep 30'") +
              " 2>&1");
  INFO(r.output);
  REQUIRE(r.exit_code == 137);
  REQUIRE(std::regex_search(r.output, std::regex(R"(tandem launch: rank 0 \(pid \d+\) killed by signal SIGKILL)")));
  for (pid_t pid : announced_pids(r.output)) REQUIRE(gone(pid));
}

TEST_CASE("a worker that ignores SIGTERM is killed --stop-grace after another fails", "[e2e][launch]") {
  constexpr double kGrace = 1;  // s
  fs::path dir = temp_dir("grace");
  Run r = run(launch(fmt::format("--nproc-per-node 2 --master-port 0 --stop-grace {} -- {}", kGrace,
                                 ignores_sigterm_workers(dir))) +
              " 2>&1");
  fs::remove_all(dir);
  INFO(r.output);
  REQUIRE(r.exit_code == 3);
  pid_t failed = pid_of(r.output, 1, 0), ignorer = pid_of(r.output, 0, 0);
  REQUIRE(failed > 0);
  REQUIRE(ignorer > 0);
  // The job's cause is rank 1's, the last line; rank 0 got SIGTERM, lived
  // on, and was killed with SIGKILL once the grace ran out, not before.
  REQUIRE(r.output.ends_with(fmt::format("tandem launch: rank 1 (pid {}) exited with code 3\n", failed)));
  REQUIRE(count_lines(r.output, "[rank 0] got SIGTERM") == 1);
  REQUIRE(count_lines(r.output, fmt::format("tandem launch: rank 0 (pid {}) still running 1.0 s after SIGTERM "
                                            "(--stop-grace); killing it with SIGKILL",
                                            ignorer)) == 1);
  REQUIRE(r.seconds >= kGrace);
  REQUIRE(r.seconds < kGrace + 4);
  REQUIRE(group_gone(ignorer));  // the shell and its sleep
  REQUIRE(contains(run(tandem_binary() + " launch --help").output, "--stop-grace"));
}

TEST_CASE("with --max-restarts 1 each attempt waits --stop-grace; the job ends with the first failure",
          "[e2e][launch]") {
  constexpr double kGrace = 1;  // s
  fs::path dir = temp_dir("grace");
  Run r = run(launch(fmt::format("--nproc-per-node 2 --master-port 0 --max-restarts 1 --stop_grace {} -- {}", kGrace,
                                 ignores_sigterm_workers(dir))) +
              " 2>&1");
  fs::remove_all(dir);
  INFO(r.output);
  REQUIRE(r.exit_code == 3);
  pid_t first = pid_of(r.output, 1, 0), second = pid_of(r.output, 1, 1);
  REQUIRE(first > 0);
  REQUIRE(second > 0);
  REQUIRE(count_lines(r.output, fmt::format("tandem launch: rank 1 (pid {}) exited with code 3; restarting the job "
                                            "(restart 1 of 1)",
                                            first)) == 1);
  REQUIRE(count_lines(r.output, fmt::format("tandem launch: rank 1 (pid {}) exited with code 3; no restarts left "
                                            "(--max-restarts 1); the job's first failure follows",
                                            second)) == 1);
  REQUIRE(r.output.ends_with(fmt::format("tandem launch: rank 1 (pid {}) exited with code 3\n", first)));
  REQUIRE(count_lines(r.output, "[rank 0] got SIGTERM") == 2);
  REQUIRE(count_matches(r.output, std::regex(R"(tandem launch: rank 0 \(pid \d+\) still running 1\.0 s after )"
                                             R"(SIGTERM \(--stop-grace\); killing it with SIGKILL\n)")) == 2);
  REQUIRE(r.seconds >= 2 * kGrace);
  REQUIRE(r.seconds < 2 * kGrace + 5);
  for (int attempt = 0; attempt < 2; attempt++) {
    pid_t ignorer = pid_of(r.output, 0, attempt);
    REQUIRE(ignorer > 0);
    REQUIRE(group_gone(ignorer));  // the shell and its sleep
  }
}

TEST_CASE("SIGTERM to the launcher stops its workers", "[e2e][launch]") {
  Background launcher({"--nproc-per-node", "2", "--nnodes", "1", "--node-rank", "0", "--master-port", "0", "--", "sh",
                       "-c", "echo pid $$; exec sleep 30"});
  REQUIRE(launcher.wait_for("] pid ", 2));
  auto start = Clock::now();
  REQUIRE(kill(launcher.pid(), SIGTERM) == 0);
  int code = launcher.wait_exit(8);
  std::string out = launcher.output();
  INFO(out);
  REQUIRE(code == 128 + SIGTERM);
  REQUIRE(Clock::now() - start < std::chrono::seconds(5));
  REQUIRE(contains(out, "tandem launch: received SIGTERM"));
  for (pid_t pid : announced_pids(out)) REQUIRE(gone(pid));
}

TEST_CASE("a second SIGINT kills workers that ignore the first", "[e2e][launch]") {
  // The workers ignore SIGINT; the grace period (10 s) would outlast this
  // test's deadline, so only the escalation can end them in time.
  Background launcher({"--nproc-per-node", "2", "--nnodes", "1", "--node-rank", "0", "--master-port", "0", "--", "sh",
                       "-c", "trap '' INT; echo pid $$; while :; do sleep 0.1; done"});
  REQUIRE(launcher.wait_for("] pid ", 2));
  REQUIRE(kill(launcher.pid(), SIGINT) == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  REQUIRE(launcher.wait_exit(0.1) == -1);  // still waiting for its workers
  REQUIRE(kill(launcher.pid(), SIGINT) == 0);
  int code = launcher.wait_exit(5);
  std::string out = launcher.output();
  INFO(out);
  REQUIRE(code == 128 + SIGINT);
  for (pid_t pid : announced_pids(out)) REQUIRE(gone(pid));
}

TEST_CASE("two launchers with --nnodes 2 form one job", "[e2e][launch]") {
  int port = free_port();
  std::string worker = "-- sh -c 'echo $RANK $LOCAL_RANK $WORLD_SIZE $GROUP_RANK $MASTER_PORT'";
  std::string common = fmt::format("--nnodes 2 --nproc-per-node 2 --master-port {} {}", port, worker);
  // Node 1 starts first: its launcher waits for node 0's store.
  std::string token = fmt::format("TANDEM_JOB_TOKEN=test-{}", fresh_seed());
  Run r = run(fmt::format("({} & sleep 0.3; {}; a=$?; wait $!; echo codes $a $?)",
                          launch("--node-rank 1 " + common, token), launch("--node-rank 0 " + common, token)) +
              " 2>&1");
  INFO(r.output);
  REQUIRE(count_lines(r.output, "codes 0 0") == 1);
  for (int rank = 0; rank < 4; rank++)
    REQUIRE(count_lines(r.output, fmt::format("[rank {}] {} {} 4 {} {}", rank, rank, rank % 2, rank / 2, port)) == 1);
}

TEST_CASE("a failure on node 1 stops node 0's workers", "[e2e][launch]") {
  int port = free_port();
  std::string common = fmt::format(
      "--nnodes 2 --nproc-per-node 2 --master-port {} -- sh -c "
      "'if [ $RANK = 2 ]; then sleep 1; exit 5; fi; echo pid $$; exec sleep 30'",
      port);
  std::string token = fmt::format("TANDEM_JOB_TOKEN=test-{}", fresh_seed());
  Run r = run(fmt::format("({} & {}; a=$?; wait $!; echo codes $a $?)", launch("--node-rank 1 " + common, token),
                          launch("--node-rank 0 " + common, token)) +
              " 2>&1");
  INFO(r.output);
  REQUIRE(count_lines(r.output, "codes 5 5") == 1);  // both launchers report the job's first failure
  REQUIRE(r.seconds < 10);
  std::regex cause(R"(tandem launch: rank 2 \(pid \d+ on [^)]+\) exited with code 5)");
  REQUIRE(std::distance(std::sregex_iterator(r.output.begin(), r.output.end(), cause), std::sregex_iterator()) == 2);
  std::vector<pid_t> pids = announced_pids(r.output);
  REQUIRE(pids.size() == 3);
  for (pid_t pid : pids) REQUIRE(gone(pid));
}

TEST_CASE("launch reads the job shape from Slurm when its flags are absent", "[e2e][launch]") {
  int port = free_port();
  // Two "nodes" on this machine: the list's first host, 127.0.0.1, serves the store.
  std::string slurm = fmt::format("TANDEM_JOB_TOKEN=test-{} SLURM_JOB_ID=1 SLURM_NNODES=2 SLURM_NTASKS_PER_NODE=2 "
                                  "SLURM_JOB_NODELIST='127.0.0.[1-2]'",
                                  fresh_seed());
  std::string rest = fmt::format("--master-port {} -- sh -c 'echo $RANK $WORLD_SIZE $MASTER_ADDR'", port);
  Run r = run(fmt::format("({} & {}; a=$?; wait $!; echo codes $a $?)", launch(rest, slurm + " SLURM_NODEID=1"),
                          launch(rest, slurm + " SLURM_NODEID=0")) +
              " 2>&1");
  INFO(r.output);
  REQUIRE(count_lines(r.output, "codes 0 0") == 1);
  for (int rank = 0; rank < 4; rank++)
    REQUIRE(count_lines(r.output, fmt::format("[rank {}] {} 4 127.0.0.1", rank, rank)) == 1);
}

TEST_CASE("launch gives one clear line (exit 2) for each bad invocation", "[e2e][launch]") {
  struct Case {
    std::string args, env, message;
  };
  std::vector<Case> cases = {
      {"--nnodes 2 --node-rank 0 --master-port 29999 -- true", "", "TANDEM_JOB_TOKEN"},
      {"--max-restarts -1 -- true", "", "--max-restarts -1: expected 0 or more"},
      {"--node-timeout 0.5 -- true", "", "--node-timeout 0.5: expected 1 to 86400 seconds"},
      {"--stop-grace -1 -- true", "", "--stop-grace -1: expected 0 to 3600 seconds"},
      {"--nnodes 2 --node-rank 2 -- true", "", "--node-rank 2 is outside 0..1"},
      {"--nproc-per-node 0 -- true", "", "--nproc-per-node '0'"},
      {"--nproc-per-node many -- true", "", "--nproc-per-node 'many'"},
      {"--backend mpi -- true", "", "--backend 'mpi'"},
      {"--master-port 0", "", "no command to run"},
      {"--master-port 0 -- no-such-command-tandem", "", "command 'no-such-command-tandem' not found in PATH"},
      {"--nnodes 2 --master-port 29999 -- true", "SLURM_NODEID=0 SLURM_JOB_NODELIST='n[1-' TANDEM_JOB_TOKEN=x",
       "cannot parse the Slurm node list 'n[1-'"},
  };
  for (const Case& c : cases) {
    Run r = run(launch(c.args, c.env) + " 2>&1");
    INFO(c.args << "\n" << r.output);
    REQUIRE(r.exit_code == 2);
    REQUIRE(lines_of(r.output).size() == 1);
    REQUIRE(r.output.starts_with("tandem: error: "));
    REQUIRE(contains(r.output, c.message));
  }
}

TEST_CASE("one node moves off a busy default port; a port that was asked for is an error", "[e2e][launch]") {
  // Hold 29500 (if another job holds it already, it is just as busy).
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(29500);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) REQUIRE(listen(fd, 1) == 0);
  Run moved = run(launch("-- sh -c 'echo $MASTER_PORT'") + " 2>&1");
  Run refused = run(launch("--master-port 29500 -- true") + " 2>&1");
  close(fd);
  INFO(moved.output << "\n" << refused.output);
  REQUIRE(moved.exit_code == 0);
  REQUIRE(std::regex_match(moved.output, std::regex(R"(\[rank 0\] \d+\n)")));
  REQUIRE(!contains(moved.output, "29500"));
  REQUIRE(refused.exit_code == 2);
  REQUIRE(contains(refused.output, "--master-port 29500"));
}
