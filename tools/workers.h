// The local half of `tandem launch`: start the workers, relay their output
// line by line with a "[rank R] " prefix, forward signals, and say how each
// one ended.
//
// Note [Worker processes]: each worker is fork+execve'd into its own process
// group (so Ctrl-C reaches only the launcher, which forwards it, and a
// signal to the group also reaches whatever the worker started), with
// stdin from /dev/null (a background group reading the terminal would be
// stopped), stdout and stderr into pipes, signal dispositions and mask
// reset, every other descriptor closed, and PR_SET_PDEATHSIG = SIGKILL so a
// launcher killed outright does not leave workers behind.
//
// Note [Whole lines]: one thread polls every pipe and writes only whole
// lines, each batch of lines with one write under one lock that the
// launcher's own messages share, so no line is ever cut by another. A
// partial line is flushed (with a newline added) at end of file, and a
// line longer than kMaxLineBytes is cut there rather than held forever.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace tandem::tools {

using Millis = std::chrono::milliseconds;
using Env = std::vector<std::pair<std::string, std::string>>;

inline constexpr size_t kMaxLineBytes = 1 << 20;

// Writes `text` to `fd` in full under the output lock (Note [Whole lines]).
// Errors (a closed terminal, a reader gone) drop the text: the job goes on.
void write_locked(int fd, const std::string& text);

// How one worker ended.
struct ExitCause {
  int rank = 0;
  pid_t pid = 0;
  bool signaled = false;  // killed by `code` (a signal number), else exited with `code`
  int code = 0;

  bool failed() const { return signaled || code != 0; }
  // "rank 3 (pid 4242) exited with code 7", "rank 0 (pid 4240) killed by
  // signal SIGSEGV"; `where`, when given, follows the pid ("pid 4242 on n2").
  std::string describe(const std::string& where = "") const;
  // What the launcher exits with: the code, or 128 + the signal, as a shell does.
  int exit_code() const { return signaled ? 128 + code : code; }
};

// "SIGSEGV" (or "signal 42" for one without a name).
std::string signal_name(int sig);

// Searches PATH (from `env` when it sets PATH, else the launcher's) for
// `command`; returns the path to execute or throws UserError.
std::string resolve_command(const std::string& command, const Env& env);

struct WorkerSpec {
  int rank = 0;
  Env env;  // added to (and overriding) the launcher's environment
};

class WorkerGroup {
 public:
  // Starts one process per spec, running `command` (command[0] resolved
  // through PATH). Throws UserError when the command cannot be found.
  WorkerGroup(const std::vector<std::string>& command, const std::vector<WorkerSpec>& specs);
  // Kills (SIGKILL) every worker's process group, so nothing a worker left
  // behind outlives the launcher, reaps the workers, then drains the output.
  ~WorkerGroup();
  WorkerGroup(const WorkerGroup&) = delete;
  WorkerGroup& operator=(const WorkerGroup&) = delete;

  // Reaps workers that have ended, without waiting; returns their causes
  // in the order they were found.
  std::vector<ExitCause> reap();
  bool all_exited() const;
  int running() const;

  // Sends `sig` to the process group of every worker still running.
  void signal_all(int sig);
  // Waits up to `timeout` for every worker to end on its own (reaping them,
  // their causes dropped), or until `interrupt()` says to stop waiting;
  // true when every worker has ended.
  bool await_all(Millis timeout, const std::function<bool()>& interrupt);
  // Sends `sig` (SIGTERM, or the signal the launcher got) to every running
  // worker, then waits up to `grace` (--stop-grace) for them to end;
  // SIGKILL to the rest, each named on stderr, when the grace runs out or
  // `escalate()` says so. Returns with every worker reaped.
  void stop(int sig, Millis grace, const std::function<bool()>& escalate);

  // Waits (up to `drain`) for the output pipes to reach end of file, then
  // flushes what is left and stops the output thread. Call once every
  // worker has been reaped; a descendant that kept a pipe open is cut off.
  void finish_output(Millis drain);

 private:
  struct Worker {
    int rank;
    pid_t pid;
    bool exited = false;
  };
  struct Stream {
    int fd;
    int out_fd;
    std::string prefix;
    std::string pending;
  };
  void spawn(const WorkerSpec& spec, const std::string& path, char* const* argv, char* const* sh_argv, int devnull);
  void pump();

  std::vector<Worker> workers_;
  std::vector<Stream> streams_;  // two per worker: stdout, stderr
  std::atomic<bool> drain_now_{false};
  std::thread output_;
};

// The launcher's signal handling: SIGINT, SIGTERM and SIGHUP are counted
// (and the last one remembered) instead of ending the launcher, which polls
// them; SIGPIPE is ignored so that a closed output does not kill the job.
void install_launcher_signal_handlers();
int signals_received();
int last_signal();

}  // namespace tandem::tools
