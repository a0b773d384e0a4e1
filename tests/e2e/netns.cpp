// Two nodes on one machine: network namespaces tandem_n0_PID / tandem_n1_PID
// joined by a veth pair (tools/netns.sh), one `tandem launch` with two
// ranks in each. Four cases:
//   cut link      the link cut for good mid-training: both launchers name
//                 the cause within 2 x --node-timeout of the cut, and exit;
//   restart       the link cut mid-training and mended: the failed
//                 collectives are reported on both nodes (bounds below), and
//                 with --max-restarts the job completes bitwise equal to an
//                 uninterrupted run;
//   lost launcher node 1's launcher killed with SIGKILL (its workers only
//                 hold the store): node 0 names it within 2 x --node-timeout;
//   lost launcher, training
//                 the same mid-training: node 0 reports it within
//                 2 x --node-timeout (its workers' collectives break at once).
// Every report is timed from the cut (or kill) to the poll that first saw
// its line in the node's output, at most 20 ms late (watch()).
//
// Needs root and `ip netns`; otherwise it passes with a WARN "SKIPPED: ..."
// line (Catch2 v2 has no skip). Every launcher runs under `timeout`; the
// namespaces are this process's own (tandem_n0_PID, tandem_n1_PID), and a
// guard tears them down at the end, whatever happened (killing whatever is
// left inside); pairs left by a test process killed outright are swept at
// the next start.
//
// Note [Detection bounds]: after a cut two mechanisms can notice.
// (a) The launchers (Note [Lost nodes] in tools/launcher.h), bounded by
// --node-timeout T: node 0 misses node 1's heartbeats (one every T/4) and
// fails the job "node 1 lost: no heartbeat" within T + 2 x T/4 of the cut
// (plus a 200 ms poll), stops its workers and exits at once, printing the
// line; node 1's first store request after the cut goes unanswered and it
// gives up after T (the launchers' store reply timeout), naming the lost
// store, within T + 200 ms. Both inside 2 x T.
// (b) The workers: every collective over the cut link fails after
// comm_timeout, and the worker prints the watchdog's line, on both nodes
// within 2 x comm_timeout (on node 1, cut off from the store, the
// watchdog's store reads give up after at most 1 s). If (b) comes first,
// node 0's launcher stops its workers and serves the store for up to
// kFailureAckTimeout (10 s, tools/launcher.cpp) so that the other nodes
// can learn the cause, and only then exits with its own line.
// So each case picks the one it tests: the cut-link case sets comm_timeout
// (kCutCommTimeout) far above 2 x T, so that (a) alone acts; the restart
// case keeps the default --node-timeout (30 s), so that (b) acts and node
// 1's store request is answered once the link is back.
// A killed launcher takes its workers with it (PR_SET_PDEATHSIG): when they
// were training, node 0's workers see their connections reset at once, so
// (b) acts within milliseconds (each says a peer closed or reset its
// connection), and node 0's launcher, which keeps watching heartbeats while
// it waits for node 1 to learn the failure, names node 1 lost within 2 x T
// and exits then.
// Measured on 2 CPU cores: see the WARN lines.
#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/process.h"
#include "support/testing.h"

using namespace tandem::testing;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

namespace {

// Node i's namespace, as tools/netns.sh names it with TANDEM_NETNS_TAG set
// to this process's pid.
std::string ns(int node) { return fmt::format("tandem_n{}_{}", node, getpid()); }
const std::string kDev[2] = {"veth_n0", "veth_n1"};
const std::string kAddr[2] = {"10.77.0.1", "10.77.0.2"};
constexpr int kNodeTimeout = 4;                    // s, --node-timeout of the failure cases
constexpr double kNodeBound = 2.0 * kNodeTimeout;  // Note [Detection bounds] (a): what the launchers promise
constexpr int kCommTimeout = 5;                    // s, comm_timeout of every training job but the cut-link one's
constexpr double kCommBound = 2.0 * kCommTimeout;  // Note [Detection bounds] (b), on both nodes
constexpr int kCutCommTimeout = 30;     // s, comm_timeout of the cut-link case: far above kNodeBound, so (a) alone acts
constexpr int kSlack = 5;               // s, waits past a bound, so a late report is measured, not lost
constexpr int kJobTimeout = 60;         // s, `timeout` around every launcher
// ~5 ms a step on 2 CPU cores: the cut lands ~2.5 s before the end.
constexpr int kSteps = 600;
constexpr int kCkptEvery = 20;
constexpr int kCutAfterStep = 40;  // the link goes down once this checkpoint exists
// Gloo binds every rank to CommOptions::host; ranks in two namespaces need
// each its own namespace's address, which init_process_group reads from
// this variable.
const std::string kHostVariable = "TANDEM_HOST";

std::string source_dir() {
  const char* dir = std::getenv("TANDEM_SOURCE_DIR");
  REQUIRE(dir != nullptr);
  return dir;
}

bool shell_ok(const std::string& script) { return run_shell(script + " >/dev/null 2>&1").exit_code == 0; }

enum class Data { Needed, NotNeeded };

// Why this machine cannot run the case; empty when it can.
std::string skip_reason(Data data) {
  if (geteuid() != 0) return fmt::format("network namespaces need root (uid {})", geteuid());
  if (!shell_ok("command -v ip")) return "`ip` is not installed (apt-get install iproute2)";
  if (!shell_ok("timeout 5 ip netns list")) return "`ip netns list` fails here (no CAP_SYS_ADMIN?)";
  if (data == Data::Needed && !fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
    return "Fashion-MNIST is not installed (tools/setup.sh)";
  return "";
}

// True (after a visible WARN) when the case cannot run here.
bool skipped(Data data) {
  std::string why = skip_reason(data);
  if (why.empty()) return false;
  WARN("SKIPPED: " << why);
  fmt::print(stderr, "[netns] SKIPPED: {}\n", why);  // Catch2 v2 shows WARN only with -s or on failure
  return true;
}

// tools/netns.sh VERB for this process's pair (TANDEM_NETNS_TAG: ns()).
std::string netns_script(const std::string& verb) {
  return fmt::format("TANDEM_NETNS_TAG={} timeout 20 bash {}/tools/netns.sh {} 2>&1", getpid(), source_dir(), verb);
}

// The namespaces for one case, named after this process (ns()), so that
// another test process on the machine never cuts or kills our nodes: up
// (after a sweep of pairs whose test process was killed before its own
// `down`), and down when the scope ends, whatever happened.
struct Namespaces {
  Namespaces() {
    run_shell(fmt::format("timeout 60 bash {}/tools/netns.sh sweep 2>&1", source_dir()));
    ShellResult r = run_shell(netns_script("down") + " && " + netns_script("up"));
    INFO(r.output);
    if (r.exit_code != 0) run_shell(netns_script("down"));  // the destructor does not run
    REQUIRE(r.exit_code == 0);
  }
  ~Namespaces() { run_shell(netns_script("down")); }
  Namespaces(const Namespaces&) = delete;
  Namespaces& operator=(const Namespaces&) = delete;
};

// A directory for one case's logs and checkpoints, removed at the end.
struct WorkDir {
  WorkDir() : path(temp_dir("tandem-netns")) {}
  ~WorkDir() { fs::remove_all(path); }
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
  fs::path path;
};

void set_link(int node, bool up) {
  std::string cmd = fmt::format("timeout 5 ip -n {} link set {} {}", ns(node), kDev[node], up ? "up" : "down");
  REQUIRE(shell_ok(cmd));
}

// The processes whose parent is `parent` (from /proc/*/stat).
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> children;
  std::error_code ec;
  for (fs::directory_iterator it("/proc", ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(it->path() / "stat");
    std::string stat;
    std::getline(in, stat);
    size_t comm_end = stat.rfind(')');  // the command name may hold spaces and parentheses
    if (comm_end == std::string::npos) continue;
    std::istringstream rest(stat.substr(comm_end + 1));
    char state = 0;
    pid_t ppid = 0;
    if (rest >> state >> ppid && ppid == parent) children.push_back(std::stoi(name));
  }
  return children;
}

// True once nothing runs in `node`'s namespace (polled up to 3 s).
bool namespace_empty(int node) {
  auto deadline = Clock::now() + std::chrono::seconds(3);
  while (true) {
    ShellResult r = run_shell(fmt::format("timeout 5 ip netns pids {}", ns(node)));
    if (r.exit_code == 0 && r.output.find_first_not_of(" \n") == std::string::npos) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

enum class Workers {
  Train,  // `tandem train` on Fashion-MNIST, 2 x 2 ranks over gloo
  Sleep,  // print "pid N" and sleep: the nodes share only the launchers' store
};

struct JobOptions {
  Workers workers = Workers::Train;
  int max_restarts = 0;
  int node_timeout = 0;             // s, --node-timeout; 0 keeps the launcher's default (30 s)
  int comm_timeout = kCommTimeout;  // s, tandem train's
};

// A 2x2 job: node 0 serves the store on 10.77.0.1; rank 0 (node 0)
// writes checkpoints to DIR/ckpt.
struct Job {
  Job(const fs::path& dir, const JobOptions& o) : dir_(dir) {
    fs::create_directories(dir);
    std::string token = fmt::format("netns-{}", fresh_seed());
    store_port = free_port();  // fresh namespaces: any port is free there
    std::string workers =
        o.workers == Workers::Sleep
            ? std::string("sh -c 'echo pid $$; exec sleep 60'")
            : fmt::format(
                  "{} train --config {}/models/mlp/fashion.toml --set max_steps={} --set ckpt_every={} "
                  "--set mlp.hidden=[64] --set eval_every=1000 --set batch_size=32 --set log_every={} "
                  "--set comm_timeout={} --ckpt-dir {} --keep 3",
                  tandem_binary(), source_dir(), kSteps, kCkptEvery, kCkptEvery, o.comm_timeout,
                  (dir / "ckpt").string());
    std::string node_timeout = o.node_timeout > 0 ? fmt::format("--node-timeout {}", o.node_timeout) : "";
    for (int i : {0, 1}) {
      std::string command = fmt::format(
          "env -u SLURM_NNODES -u SLURM_JOB_NUM_NODES -u SLURM_NODEID -u SLURM_NTASKS_PER_NODE -u SLURM_JOB_NODELIST "
          "-u SLURM_NODELIST -u SLURM_GPUS_ON_NODE -u OMP_NUM_THREADS TANDEM_JOB_TOKEN={} {}={} timeout {} {} launch "
          "--nnodes 2 --node-rank {} --master-addr {} --master-port {} --nproc-per-node 2 --backend gloo "
          "--max-restarts {} {} -- {}",
          token, kHostVariable, kAddr[i], kJobTimeout, tandem_binary(), i, kAddr[0], store_port, o.max_restarts,
          node_timeout, workers);
      // The node's launcher, in its namespace (`ip netns exec` and `env`
      // exec; `timeout` forks the launcher: launcher_pid()).
      nodes[i].emplace(fmt::format("ip netns exec {} {}", ns(i), command), dir / fmt::format("node{}.log", i));
    }
  }

  // Both launchers' exit codes, once both have exited (within kJobTimeout).
  std::pair<int, int> finish() {
    auto deadline = Clock::now() + std::chrono::seconds(kJobTimeout + kSlack);
    std::optional<int> a = nodes[0]->wait_until(deadline), b = nodes[1]->wait_until(deadline);
    REQUIRE(a.has_value());
    REQUIRE(b.has_value());
    return {*a, *b};
  }

  fs::path checkpoint(int step) const { return dir_ / "ckpt" / fmt::format("step_{:08d}", step); }
  fs::path final_model() const { return checkpoint(kSteps) / "model.safetensors"; }
  std::string outputs() const {
    return fmt::format("--- node 0:\n{}\n--- node 1:\n{}", nodes[0]->output(), nodes[1]->output());
  }

  // Waits (up to kJobTimeout) for checkpoint `step` while both launchers run.
  void await_checkpoint(int step) {
    auto deadline = Clock::now() + std::chrono::seconds(kJobTimeout);
    while (!fs::exists(checkpoint(step)) && Clock::now() < deadline && nodes[0]->running() && nodes[1]->running())
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    INFO(outputs());
    REQUIRE(fs::exists(checkpoint(step)));
    REQUIRE(nodes[0]->running());
    REQUIRE(nodes[1]->running());
  }

  // Waits (up to kJobTimeout) for both Workers::Sleep workers of each node
  // to say "pid N".
  void await_workers() {
    auto deadline = Clock::now() + std::chrono::seconds(kJobTimeout);
    for (auto& node : nodes) {
      INFO(outputs());
      REQUIRE(node->await(std::regex(R"(\] pid \d+\n)"), deadline, 2));
    }
  }

  // The pid of `node`'s `tandem launch`: the child of the `timeout` that
  // BackgroundProcess started.
  pid_t launcher_pid(int node) const {
    std::vector<pid_t> children = children_of(nodes[node]->pid());
    INFO(outputs());
    REQUIRE(children.size() == 1);
    return children[0];
  }

  std::optional<BackgroundProcess> nodes[2];
  int store_port = 0;
  fs::path dir_;
};

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

double seconds_between(Clock::time_point a, Clock::time_point b) { return Seconds(b - a).count(); }

// One node's report the test waits for, and what it saw: when the node's
// output first matched `report` (the time of the poll that saw it), and
// its exit code once it exited (BackgroundProcess::exited() says when).
struct Watch {
  Watch(BackgroundProcess& n, const std::string& pattern) : node(&n), report(pattern) {}
  BackgroundProcess* node;
  std::regex report;
  std::optional<Clock::time_point> reported;
  std::optional<int> code;
};

enum class Until { Reported, Exited };

// Polls every watched node, all together every 20 ms (so that waiting on
// one never delays seeing another), until each has reported (and exited,
// with Until::Exited) or `deadline`.
void watch(std::vector<Watch>& watches, Until until, Clock::time_point deadline) {
  while (true) {
    bool done = true;
    for (Watch& w : watches) {
      if (!w.reported) w.reported = w.node->await(w.report, Clock::now());  // a single look
      if (!w.code) w.code = w.node->wait_until(Clock::now());
      done = done && w.reported && (until == Until::Reported || w.code);
    }
    if (done || Clock::now() >= deadline) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Seconds from `t0` to the watched report; +inf when there was none, which
// fails every `<= bound`.
double seconds_to_report(Clock::time_point t0, const Watch& w) {
  return w.reported ? seconds_between(t0, *w.reported) : std::numeric_limits<double>::infinity();
}

Clock::time_point after(Clock::time_point t, double seconds) {
  return t + std::chrono::duration_cast<Clock::duration>(Seconds(seconds));
}

// A worker's line saying that a collective failed: the watchdog's, the
// collective's own timeout, or gloo's error when a peer went away.
const std::string kCollectiveFailed =
    R"(\[rank \d\] .*(watchdog: gloo \w+ #\d+|did not complete within \d+ ms|Gloo error|a peer closed or reset))";

}  // namespace

TEST_CASE("two nodes in network namespaces: a cut link is reported on both within 2 x --node-timeout", "[e2e][netns]") {
  if (skipped(Data::Needed)) return;
  Namespaces namespaces;
  WorkDir work;
  Job job(work.path, {.node_timeout = kNodeTimeout, .comm_timeout = kCutCommTimeout});
  job.await_checkpoint(kCutAfterStep);
  auto cut = Clock::now();  // before `ip` runs: the link is up until then, so no report is timed short
  set_link(1, /*up=*/false);
  // Note [Detection bounds] (a): node 0 misses node 1's heartbeats; node
  // 1's store requests go unanswered.
  std::vector<Watch> watches = {
      {*job.nodes[0], fmt::format(R"(tandem launch: node 1 lost: no heartbeat from its launcher \(pid \d+ )"
                                  R"(on [^)]+\) for [\d.]+ s \(--node-timeout {}\))",
                                  kNodeTimeout)},
      {*job.nodes[1], fmt::format(R"(tandem launch: lost the store at 10\.77\.0\.1:{}: no reply within )"
                                  R"([\d.]+ s \(--node-timeout {}\))",
                                  job.store_port, kNodeTimeout)}};
  watch(watches, Until::Exited, after(cut, kNodeBound + kSlack));
  INFO(job.outputs());
  double report0 = seconds_to_report(cut, watches[0]), report1 = seconds_to_report(cut, watches[1]);
  WARN(fmt::format("after the cut, node 0 named node 1 lost in {:.2f} s, node 1 named the lost store in {:.2f} s "
                   "(bound 2 x --node-timeout = {} s)",
                   report0, report1, kNodeBound));
  REQUIRE(report0 <= kNodeBound);
  REQUIRE(report1 <= kNodeBound);
  // Each launcher exits with its line (Note [Lost nodes]: no waiting for
  // the other node, which cannot answer).
  REQUIRE(watches[0].code == std::optional<int>(1));
  REQUIRE(watches[1].code == std::optional<int>(1));
  REQUIRE(seconds_between(cut, job.nodes[0]->exited()) <= kNodeBound);
  REQUIRE(seconds_between(cut, job.nodes[1]->exited()) <= kNodeBound);
  // (a) acted alone: no collective had failed yet.
  REQUIRE(!std::regex_search(job.outputs(), std::regex(kCollectiveFailed)));
}

TEST_CASE("two nodes in network namespaces: after a cut link, a restarted job matches the uninterrupted one",
          "[e2e][netns]") {
  if (skipped(Data::Needed)) return;
  Namespaces namespaces;
  WorkDir work;

  // The uninterrupted job: the reference.
  Job reference(work.path / "reference", {});
  {
    auto [a, b] = reference.finish();
    INFO(reference.outputs());
    REQUIRE(a == 0);
    REQUIRE(b == 0);
    REQUIRE(fs::exists(reference.final_model()));
  }

  // With restarts and the link mended, the job completes equal to it.
  Job job(work.path / "restart", {.max_restarts = 2});
  job.await_checkpoint(kCutAfterStep);
  auto cut = Clock::now();
  set_link(1, /*up=*/false);
  // Note [Detection bounds] (b): the collectives fail on both nodes.
  std::vector<Watch> watches = {{*job.nodes[0], kCollectiveFailed}, {*job.nodes[1], kCollectiveFailed}};
  watch(watches, Until::Reported, after(cut, kCommBound + kSlack));
  // Mend the link once node 0 has seen the failure and waits for node 1
  // to meet it for the restart.
  auto deadline = after(cut, kCommBound + kSlack);
  while (!contains(job.nodes[0]->output(), "restarting the job") && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  set_link(1, /*up=*/true);
  {
    INFO(job.outputs());
    double report0 = seconds_to_report(cut, watches[0]), report1 = seconds_to_report(cut, watches[1]);
    WARN(fmt::format("after the cut, a collective failed on node 0 in {:.2f} s (bound 2 x comm_timeout = {} s), "
                     "on node 1 in {:.2f} s (bound {} s)",
                     report0, kCommBound, report1, kCommBound));
    REQUIRE(report0 <= kCommBound);
    REQUIRE(report1 <= kCommBound);
    REQUIRE(contains(job.nodes[0]->output(), "restarting the job (restart 1 of 2)"));
  }
  auto [a, b] = job.finish();
  INFO(job.outputs());
  REQUIRE(a == 0);
  REQUIRE(b == 0);
  ShellResult same =
      run_shell(fmt::format("timeout 10 cmp {} {} 2>&1", reference.final_model().string(), job.final_model().string()));
  INFO(same.output);
  REQUIRE(same.exit_code == 0);
}

TEST_CASE("two nodes in network namespaces: node 0 names node 1 within 2 x --node-timeout when its launcher is killed",
          "[e2e][netns]") {
  if (skipped(Data::NotNeeded)) return;
  Namespaces namespaces;
  WorkDir work;
  Job job(work.path, {.workers = Workers::Sleep, .max_restarts = 1, .node_timeout = kNodeTimeout});
  job.await_workers();
  std::vector<pid_t> workers = announced_pids(job.outputs());
  pid_t launcher = job.launcher_pid(1);
  REQUIRE(kill(launcher, SIGKILL) == 0);
  auto killed = Clock::now();
  std::vector<Watch> watches = {
      {*job.nodes[0], fmt::format(R"(tandem launch: node 1 lost: no heartbeat from its launcher \(pid {} )"
                                  R"(on [^)]+\) for [\d.]+ s \(--node-timeout {}\))",
                                  launcher, kNodeTimeout)}};
  watch(watches, Until::Exited, after(killed, kNodeBound + kSlack));
  INFO(job.outputs());
  double report = seconds_to_report(killed, watches[0]);
  WARN(fmt::format("node 0 named node 1's killed launcher in {:.2f} s (bound 2 x --node-timeout = {} s)", report,
                   kNodeBound));
  REQUIRE(report <= kNodeBound);
  REQUIRE(watches[0].code == std::optional<int>(1));
  REQUIRE(seconds_between(killed, job.nodes[0]->exited()) <= kNodeBound);
  // A lost node cannot come back: no restart, though one was allowed.
  REQUIRE(!contains(job.nodes[0]->output(), "restarting"));
  // Node 1's workers went with their launcher (PR_SET_PDEATHSIG), node 0's
  // were stopped by theirs.
  REQUIRE(workers.size() == 4);
  for (pid_t pid : workers) REQUIRE(gone(pid));
  REQUIRE(job.nodes[1]->wait_until(Clock::now() + std::chrono::seconds(3)).has_value());
  REQUIRE(namespace_empty(1));
}

TEST_CASE("two nodes in network namespaces: node 0 reports a launcher killed mid-training within 2 x --node-timeout",
          "[e2e][netns]") {
  if (skipped(Data::Needed)) return;
  Namespaces namespaces;
  WorkDir work;
  Job job(work.path, {.node_timeout = kNodeTimeout});
  job.await_checkpoint(kCkptEvery);
  pid_t launcher = job.launcher_pid(1);
  REQUIRE(kill(launcher, SIGKILL) == 0);
  auto killed = Clock::now();
  // Note [Detection bounds]: node 0's workers see node 1's connections
  // reset, and node 0's launcher names node 1 once its heartbeats stop.
  std::vector<Watch> watches = {
      {*job.nodes[0], fmt::format(R"(\[rank [01]\] .*a peer closed or reset its connection.*\[10\.77\.0\.2\]|)"
                                  R"(tandem launch: .*node 1 lost: no heartbeat from its launcher \(pid {} )",
                                  launcher)}};
  constexpr double kExitBound = kNodeBound;
  watch(watches, Until::Exited, after(killed, kExitBound + kSlack));
  INFO(job.outputs());
  double report = seconds_to_report(killed, watches[0]);
  double exited = watches[0].code ? seconds_between(killed, job.nodes[0]->exited()) : -1;
  WARN(fmt::format("node 0 reported node 1's killed launcher in {:.2f} s (bound 2 x --node-timeout = {} s); its "
                   "launcher exited {:.2f} s after the kill (bound {} s)",
                   report, kNodeBound, exited, kExitBound));
  REQUIRE(report <= kNodeBound);
  REQUIRE(watches[0].code.has_value());
  REQUIRE(*watches[0].code != 0);
  REQUIRE(exited <= kExitBound);
  REQUIRE(std::regex_search(job.nodes[0]->output(),
                            std::regex(fmt::format(R"(tandem launch: .*node 1 lost: no heartbeat from its launcher \(pid {} )",
                                                   launcher))));
  // Node 1's `timeout` ended with its launcher, and the workers with it.
  REQUIRE(job.nodes[1]->wait_until(Clock::now() + std::chrono::seconds(3)).has_value());
  REQUIRE(namespace_empty(1));
}
