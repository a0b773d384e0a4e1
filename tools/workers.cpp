// Worker processes for `tandem launch`: Note [Worker processes] and Note
// [Whole lines] in workers.h say what is done and why.
#include "tools/workers.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "runtime/core/error.h"

extern char** environ;

namespace tandem::tools {

namespace {

constexpr size_t kReadBytes = 64 << 10;
constexpr Millis kPollTick{20};

std::mutex g_output_mutex;
volatile sig_atomic_t g_signals = 0;
volatile sig_atomic_t g_last_signal = 0;

void on_signal(int sig) {
  g_last_signal = sig;
  g_signals = g_signals + 1;
}

void sleep_tick() { std::this_thread::sleep_for(kPollTick); }

// A pipe whose read end (ours) does not block; both ends close on exec.
void make_pipe(int fds[2]) {
  TANDEM_CHECK(pipe2(fds, O_CLOEXEC) == 0, fmt::format("pipe2: {}", std::strerror(errno)));
  fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
}

// Everything the child needs, built before fork: after fork in a threaded
// process only async-signal-safe calls are allowed (no allocation).
struct ChildPlan {
  const char* path;
  char* const* argv;
  char* const* sh_argv;  // for a script without "#!": /bin/sh path args...
  char* const* envp;
  int stdin_fd, stdout_fd, stderr_fd;
  pid_t parent;
};

[[noreturn]] void exec_child(const ChildPlan& p) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != p.parent) _exit(127);  // the launcher died before prctl
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &dfl, nullptr);  // KILL/STOP fail harmlessly
  if (dup2(p.stdin_fd, 0) < 0 || dup2(p.stdout_fd, 1) < 0 || dup2(p.stderr_fd, 2) < 0) _exit(127);
  if (close_range(3, ~0u, 0) != 0)
    for (int fd = 3; fd < 65536; fd++) close(fd);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  execve(p.path, p.argv, p.envp);
  if (errno == ENOEXEC) execve("/bin/sh", p.sh_argv, p.envp);
  const char* msg = "tandem launch: cannot execute ";
  (void)!write(2, msg, std::strlen(msg));
  (void)!write(2, p.path, std::strlen(p.path));
  (void)!write(2, "\n", 1);
  _exit(127);
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

std::vector<std::string> worker_environment(const Env& extra) {
  std::vector<std::string> out;
  for (char** e = environ; *e; e++) {
    std::string_view entry(*e);
    std::string_view name = entry.substr(0, entry.find('='));
    bool overridden = false;
    for (const auto& [k, v] : extra) overridden = overridden || k == name;
    if (!overridden) out.emplace_back(entry);
  }
  for (const auto& [k, v] : extra) out.push_back(k + "=" + v);
  return out;
}

bool is_executable_file(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

}  // namespace

void write_locked(int fd, const std::string& text) {
  std::lock_guard<std::mutex> lock(g_output_mutex);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && errno == EAGAIN) {
      pollfd p = {fd, POLLOUT, 0};
      poll(&p, 1, 100);
    } else if (!(n < 0 && errno == EINTR)) {
      return;  // EPIPE and friends: drop the text
    }
  }
}

std::string signal_name(int sig) {
  if (const char* abbrev = sigabbrev_np(sig)) return fmt::format("SIG{}", abbrev);
  return fmt::format("signal {}", sig);
}

std::string ExitCause::describe(const std::string& where) const {
  std::string who = fmt::format("rank {} (pid {}{})", rank, pid, where.empty() ? "" : " on " + where);
  if (signaled) return fmt::format("{} killed by signal {}", who, signal_name(code));
  return fmt::format("{} exited with code {}", who, code);
}

std::string resolve_command(const std::string& command, const Env& env) {
  if (command.empty()) throw UserError("the command to run is empty");
  if (command.find('/') != std::string::npos) {
    if (is_executable_file(command)) return command;
    throw UserError(fmt::format("cannot run '{}': not an executable file", command));
  }
  std::string path = "/usr/local/bin:/usr/bin:/bin";
  if (const char* p = std::getenv("PATH")) path = p;
  for (const auto& [k, v] : env)
    if (k == "PATH") path = v;
  size_t start = 0;
  while (start <= path.size()) {
    size_t colon = path.find(':', start);
    if (colon == std::string::npos) colon = path.size();
    std::string dir = path.substr(start, colon - start);
    std::string candidate = (dir.empty() ? "." : dir) + "/" + command;
    if (is_executable_file(candidate)) return candidate;
    start = colon + 1;
  }
  throw UserError(fmt::format("command '{}' not found in PATH; give its full path after --", command));
}

WorkerGroup::WorkerGroup(const std::vector<std::string>& command, const std::vector<WorkerSpec>& specs) {
  TANDEM_CHECK(!command.empty() && !specs.empty(), "WorkerGroup needs a command and workers");
  // Every worker gets the same PATH from the launcher, so one lookup does.
  std::string path = resolve_command(command[0], specs[0].env);
  std::vector<std::string> argv_strings = command;
  std::vector<char*> argv = pointers(argv_strings);
  std::vector<std::string> sh_strings = {"sh", path};
  sh_strings.insert(sh_strings.end(), command.begin() + 1, command.end());
  std::vector<char*> sh_argv = pointers(sh_strings);
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  TANDEM_CHECK(devnull >= 0, fmt::format("open /dev/null: {}", std::strerror(errno)));
  try {
    for (const WorkerSpec& spec : specs) spawn(spec, path, argv.data(), sh_argv.data(), devnull);
  } catch (...) {
    close(devnull);
    for (const Worker& w : workers_) killpg(w.pid, SIGKILL);
    for (const Worker& w : workers_) waitpid(w.pid, nullptr, 0);
    for (Stream& s : streams_) close(s.fd);
    throw;
  }
  close(devnull);
  output_ = std::thread([this] { pump(); });
}

void WorkerGroup::spawn(const WorkerSpec& spec, const std::string& path, char* const* argv, char* const* sh_argv,
                        int devnull) {
  std::vector<std::string> env_strings = worker_environment(spec.env);
  std::vector<char*> envp = pointers(env_strings);
  int out[2], err[2];
  make_pipe(out);
  try {
    make_pipe(err);
  } catch (...) {
    close(out[0]);
    close(out[1]);
    throw;
  }
  ChildPlan plan = {path.c_str(), argv, sh_argv, envp.data(), devnull, out[1], err[1], getpid()};

  // Signals stay blocked across fork so none reaches the child before it
  // has reset the launcher's handlers.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  pid_t pid = fork();
  if (pid == 0) exec_child(plan);
  int fork_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  close(out[1]);
  close(err[1]);
  if (pid < 0) {
    close(out[0]);
    close(err[0]);
    TANDEM_CHECK(false, fmt::format("fork: {}", std::strerror(fork_errno)));
  }
  setpgid(pid, pid);  // also here, so the group exists before we signal it
  workers_.push_back({spec.rank, pid});
  std::string prefix = fmt::format("[rank {}] ", spec.rank);
  streams_.push_back({out[0], STDOUT_FILENO, prefix, {}});
  streams_.push_back({err[0], STDERR_FILENO, prefix, {}});
}

WorkerGroup::~WorkerGroup() {
  for (const Worker& w : workers_) killpg(w.pid, SIGKILL);  // also what exited workers left behind
  for (Worker& w : workers_) {
    if (w.exited) continue;
    int status;
    while (waitpid(w.pid, &status, 0) < 0 && errno == EINTR) {
    }
    w.exited = true;
  }
  if (output_.joinable()) finish_output(Millis(1000));
  for (Stream& s : streams_)
    if (s.fd >= 0) close(s.fd);
}

std::vector<ExitCause> WorkerGroup::reap() {
  std::vector<ExitCause> ended;
  for (Worker& w : workers_) {
    if (w.exited) continue;
    int status = 0;
    pid_t r = waitpid(w.pid, &status, WNOHANG);
    if (r == 0 || (r < 0 && errno == EINTR)) continue;
    w.exited = true;
    ExitCause cause{.rank = w.rank, .pid = w.pid};
    if (r < 0) {  // ECHILD: someone else reaped it; its status is lost
      cause.code = 255;
    } else if (WIFSIGNALED(status)) {
      cause.signaled = true;
      cause.code = WTERMSIG(status);
    } else {
      cause.code = WEXITSTATUS(status);
    }
    ended.push_back(cause);
  }
  return ended;
}

bool WorkerGroup::all_exited() const { return running() == 0; }

int WorkerGroup::running() const {
  int n = 0;
  for (const Worker& w : workers_) n += w.exited ? 0 : 1;
  return n;
}

void WorkerGroup::signal_all(int sig) {
  for (const Worker& w : workers_)
    if (!w.exited) killpg(w.pid, sig);
}

bool WorkerGroup::await_all(Millis timeout, const std::function<bool()>& interrupt) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    reap();
    if (all_exited()) return true;
    if (std::chrono::steady_clock::now() >= deadline || (interrupt && interrupt())) return false;
    sleep_tick();
  }
}

void WorkerGroup::stop(int sig, Millis grace, const std::function<bool()>& escalate) {
  signal_all(sig);
  // A stopped worker (SIGSTOP, a debugger) would hold the signal until the
  // grace period ran out: continue it so it can act on it now.
  signal_all(SIGCONT);
  bool escalated = false;
  if (await_all(grace, [&] { return escalate && (escalated = escalate()); })) return;
  // Said, as torchrun does, so that a worker cut off in its cleanup (a
  // checkpoint half written, logs not flushed) is not a mystery.
  std::string said;
  for (const Worker& w : workers_) {
    if (w.exited) continue;
    if (escalated)
      said += fmt::format("tandem launch: killing rank {} (pid {}) with SIGKILL: the launcher was signalled again\n",
                          w.rank, w.pid);
    else
      said += fmt::format("tandem launch: rank {} (pid {}) still running {:.1f} s after {} (--stop-grace); killing "
                          "it with SIGKILL\n",
                          w.rank, w.pid, std::chrono::duration<double>(grace).count(), signal_name(sig));
  }
  write_locked(2, said);
  signal_all(SIGKILL);
  for (Worker& w : workers_) {
    if (w.exited) continue;
    int status;
    while (waitpid(w.pid, &status, 0) < 0 && errno == EINTR) {
    }
    w.exited = true;
  }
}

void WorkerGroup::finish_output(Millis drain) {
  if (!output_.joinable()) return;
  auto deadline = std::chrono::steady_clock::now() + drain;
  while (std::chrono::steady_clock::now() < deadline) {
    bool open = false;
    {
      std::lock_guard<std::mutex> lock(g_output_mutex);  // the pump closes fds under this lock
      for (const Stream& s : streams_) open = open || s.fd >= 0;
    }
    if (!open) break;
    sleep_tick();
  }
  drain_now_ = true;
  output_.join();
}

// The output thread: Note [Whole lines].
void WorkerGroup::pump() {
  std::vector<char> buf(kReadBytes);
  std::vector<pollfd> fds;
  std::vector<Stream*> owners;

  auto emit_lines = [](Stream& s, bool at_eof) {
    size_t end = s.pending.rfind('\n');
    std::string out;
    if (end != std::string::npos) {
      for (size_t start = 0; start <= end;) {
        size_t nl = s.pending.find('\n', start);
        out += s.prefix;
        out.append(s.pending, start, nl + 1 - start);
        start = nl + 1;
      }
      s.pending.erase(0, end + 1);
    }
    if (!s.pending.empty() && (at_eof || s.pending.size() >= kMaxLineBytes)) {
      out += s.prefix + s.pending + "\n";
      s.pending.clear();
    }
    if (!out.empty()) write_locked(s.out_fd, out);
  };
  auto close_stream = [&](Stream& s) {
    emit_lines(s, /*at_eof=*/true);
    std::lock_guard<std::mutex> lock(g_output_mutex);
    close(s.fd);
    s.fd = -1;
  };
  // Reads once; false at end of file (or an error), true otherwise.
  auto read_some = [&](Stream& s) {
    ssize_t n = read(s.fd, buf.data(), buf.size());
    if (n > 0) {
      s.pending.append(buf.data(), static_cast<size_t>(n));
      emit_lines(s, /*at_eof=*/false);
      return true;
    }
    return n < 0 && (errno == EAGAIN || errno == EINTR);
  };

  while (true) {
    fds.clear();
    owners.clear();
    for (Stream& s : streams_) {
      if (s.fd < 0) continue;
      fds.push_back({s.fd, POLLIN, 0});
      owners.push_back(&s);
    }
    if (fds.empty()) return;
    if (drain_now_) {  // what is already in the pipes, then stop
      for (Stream* s : owners) {
        while (true) {
          ssize_t n = read(s->fd, buf.data(), buf.size());
          if (n <= 0 && !(n < 0 && errno == EINTR)) break;
          if (n > 0) s->pending.append(buf.data(), static_cast<size_t>(n));
          if (n > 0) emit_lines(*s, /*at_eof=*/false);
        }
        close_stream(*s);
      }
      return;
    }
    int ready = poll(fds.data(), fds.size(), static_cast<int>(kPollTick.count()) * 5);
    if (ready <= 0) continue;
    for (size_t i = 0; i < fds.size(); i++) {
      if (fds[i].revents == 0) continue;
      if (!read_some(*owners[i])) close_stream(*owners[i]);
    }
  }
}

void install_launcher_signal_handlers() {
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;  // store calls in flight are resumed, not failed with EINTR
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

int signals_received() { return g_signals; }
int last_signal() { return g_last_signal; }

}  // namespace tandem::tools
