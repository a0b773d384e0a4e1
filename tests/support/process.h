// Running commands from tests (the `tandem` binary as a user runs it) and
// finding a free TCP port for a job's store.
#pragma once

#include <arpa/inet.h>
#include <signal.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
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

// A port nothing listens on right now (the kernel's pick).
inline int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  close(fd);
  return ntohs(addr.sin_port);
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

}  // namespace tandem::testing
