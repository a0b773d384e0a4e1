// Running commands from tests (the `tandem` binary as a user runs it), in
// the foreground or the background, and finding a free TCP port for a
// job's store.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "support/testing.h"

namespace tandem::testing {

struct ShellResult {
  int exit_code;       // -1 when killed by a signal
  std::string output;  // what the command wrote to stdout (add 2>&1 for stderr)
  double seconds;
};

// Runs `script` with sh and collects its stdout.
inline ShellResult run_shell(const std::string& script) {
  auto start = std::chrono::steady_clock::now();
  FILE* pipe = popen(script.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  int status = pclose(pipe);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out, seconds};
}

// build/tandem, as ctest passes it in TANDEM_BINARY.
inline std::string tandem_binary() {
  const char* binary = std::getenv("TANDEM_BINARY");
  REQUIRE(binary != nullptr);
  return binary;
}

// `tandem ARGS`, stdout and stderr together.
inline ShellResult run_tandem(const std::string& args) { return run_shell(tandem_binary() + " " + args + " 2>&1"); }

// A file of the source tree (configs, scripts), from TANDEM_SOURCE_DIR, which ctest sets.
inline std::string source_path(const std::string& rel) {
  const char* src = std::getenv("TANDEM_SOURCE_DIR");
  REQUIRE(src != nullptr);
  return std::string(src) + "/" + rel;
}

// A loopback socket on a port of the kernel's pick, listening (as another
// job's store would) until the caller closes `fd`.
struct HeldPort {
  int fd, port;
};

inline HeldPort hold_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(listen(fd, 1) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  return {fd, ntohs(addr.sin_port)};
}

// A port nothing listens on right now (the kernel's pick).
inline int free_port() {
  HeldPort held = hold_port();
  close(held.fd);
  return held.port;
}

// The pids workers announced with a "pid N" line (after a "[rank R] " prefix).
inline std::vector<pid_t> announced_pids(const std::string& output) {
  std::vector<pid_t> pids;
  std::regex re(R"(\] .*pid (\d+))");
  for (std::sregex_iterator it(output.begin(), output.end(), re), end; it != end; ++it)
    pids.push_back(std::stoi((*it)[1]));
  return pids;
}

// True once `pid` no longer exists (waits up to 3 s); kills it otherwise,
// so a failing test leaves nothing behind.
inline bool gone(pid_t pid) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (std::chrono::steady_clock::now() < deadline) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  return false;
}

// A shell command running in the background as the leader of its own
// process group, its stdout and stderr in `log`; the group is killed and
// the command reaped at the end if it is still running. A launcher started
// this way is what one node of a multi-node job is to the tests.
class BackgroundProcess {
 public:
  using Clock = std::chrono::steady_clock;

  BackgroundProcess(const std::string& command, std::filesystem::path log) : log_(std::move(log)) {
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      setpgid(0, 0);
      int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0) _exit(127);
      dup2(fd, 1);
      dup2(fd, 2);
      std::string line = "exec " + command;  // the pid is the command's, not a shell's
      execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    setpgid(pid_, pid_);
  }
  ~BackgroundProcess() {
    if (!code_) {
      kill(-pid_, SIGKILL);  // a stopped process dies of it too
      waitpid(pid_, nullptr, 0);
    }
  }
  BackgroundProcess(const BackgroundProcess&) = delete;
  BackgroundProcess& operator=(const BackgroundProcess&) = delete;

  pid_t pid() const { return pid_; }
  std::string output() const { return read_bytes(log_); }

  // When the output first held `n` matches of `pattern`, polled until `deadline`.
  std::optional<Clock::time_point> await(const std::regex& pattern, Clock::time_point deadline, size_t n = 1) const {
    while (true) {
      std::string out = output();
      if (static_cast<size_t>(std::distance(std::sregex_iterator(out.begin(), out.end(), pattern),
                                            std::sregex_iterator())) >= n)
        return Clock::now();
      if (Clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // The exit code (128 + signal when killed by one) once the command has
  // exited by `deadline`.
  std::optional<int> wait_until(Clock::time_point deadline) {
    while (!code_) {
      int status = 0;
      pid_t r = waitpid(pid_, &status, WNOHANG);
      REQUIRE(r >= 0);
      if (r == pid_) {
        code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        exited_ = Clock::now();
      } else if (Clock::now() >= deadline) {
        return std::nullopt;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    return code_;
  }
  bool running() { return !wait_until(Clock::now()); }
  Clock::time_point exited() const { return exited_; }

 private:
  std::filesystem::path log_;
  pid_t pid_ = -1;
  std::optional<int> code_;
  Clock::time_point exited_;
};

}  // namespace tandem::testing
