// Two nodes on one machine: network namespaces tandem_n0 / tandem_n1
// joined by a veth pair (tools/netns.sh), one `tandem launch` with two
// ranks in each. (1) the uninterrupted 2x2 job completes; (2) cutting the
// link for good mid-run fails both launchers with a line naming the cause,
// within the bounds below; (3) with --max-restarts 2 and the link mended
// after the failure, the job completes bitwise equal to (1).
//
// Needs root and `ip netns`; otherwise it passes with a WARN "SKIPPED: ..."
// line (Catch2 v2 has no skip). Every command runs under `timeout`, and a
// guard tears the namespaces down (killing whatever is left inside).
//
// Note [Detection bounds]: after the cut, every worker's next collective
// fails after comm_timeout (kCommTimeout) with CollectiveTimeout ("did not
// complete within 5000 ms"), or node 0's launcher misses node 1's
// heartbeats for --node-timeout (kNodeTimeout) first ("node 1 lost");
// either way it stops its workers and, the job ended, serves the store for
// up to kFailureAckTimeout (10 s, tools/launcher.cpp) so the other nodes
// can learn the cause (not after a lost node), then exits. Node 1's
// launcher polls the store every 200 ms; its first request after the cut
// goes unanswered, and it gives up after --node-timeout (the launchers'
// store reply timeout, Note [Lost nodes] in tools/launcher.h): it exits
// within 2 x kNodeTimeout of the cut, naming the lost store. In (3) the
// launchers keep the default --node-timeout (30 s), longer than the cut,
// so node 1's request is answered once the link is back. Measured on 2 CPU
// cores: see the WARN lines.
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
#include <iterator>
#include <optional>
#include <sstream>
#include <thread>

#include "support/process.h"
#include "support/testing.h"

using namespace tandem::testing;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

namespace {

const std::string kNs[2] = {"tandem_n0", "tandem_n1"};
const std::string kDev[2] = {"veth_n0", "veth_n1"};
const std::string kAddr[2] = {"10.77.0.1", "10.77.0.2"};
constexpr int kCommTimeout = 5;       // s, --set comm_timeout: a collective over the cut link fails after this
constexpr int kNodeTimeout = 4;       // s, --node-timeout in (2): a launcher that lost the other node gives up
constexpr int kFailureAckTimeout = 10;  // s, tools/launcher.cpp: node 0 serves the store this long after a failure
constexpr int kSlack = 5;             // s, process start and stop, the launcher's polls
// Note [Detection bounds]: node 0's launcher exits within
// 2 x comm_timeout + kFailureAckTimeout + slack of the cut; node 1's
// within 2 x --node-timeout.
constexpr int kNode0Bound = 2 * kCommTimeout + kFailureAckTimeout + kSlack;
constexpr int kNode1Bound = 2 * kNodeTimeout;
constexpr int kJobTimeout = 60;   // s, `timeout` around every launcher
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

// Why this machine cannot run the test; empty when it can.
std::string skip_reason() {
  if (geteuid() != 0) return fmt::format("network namespaces need root (uid {})", geteuid());
  if (!shell_ok("command -v ip")) return "`ip` is not installed (apt-get install iproute2)";
  if (!shell_ok("timeout 5 ip netns list")) return "`ip netns list` fails here (no CAP_SYS_ADMIN?)";
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
    return "Fashion-MNIST is not installed (tools/setup.sh)";
  return "";
}

std::string netns_script(const std::string& verb) {
  return fmt::format("timeout 20 bash {}/tools/netns.sh {} 2>&1", source_dir(), verb);
}

// tools/netns.sh up, and down when the scope ends, whatever happened.
struct Namespaces {
  Namespaces() {
    ShellResult r = run_shell(netns_script("up"));
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
  }
  ~Namespaces() { run_shell(netns_script("down")); }
  Namespaces(const Namespaces&) = delete;
  Namespaces& operator=(const Namespaces&) = delete;
};

void set_link(int node, bool up) {
  std::string cmd = fmt::format("timeout 5 ip -n {} link set {} {}", kNs[node], kDev[node], up ? "up" : "down");
  REQUIRE(shell_ok(cmd));
}

// A 2x2 job: node 0 serves the store on 10.77.0.1; rank 0 (node 0)
// writes checkpoints to DIR/ckpt.
struct Job {
  // `launch_flags` are added to both launchers' flags.
  Job(const fs::path& dir, int max_restarts, const std::string& launch_flags = "") {
    fs::create_directories(dir);
    std::string token = fmt::format("netns-{}", fresh_seed());
    int port = free_port();  // fresh namespaces: any port is free there
    std::string train = fmt::format(
        "{} train --config {}/models/mlp/fashion.toml --set max_steps={} --set ckpt_every={} --set mlp.hidden=[64] "
        "--set eval_every=1000 --set batch_size=32 --set log_every={} --set comm_timeout={} --ckpt-dir {} --keep 3",
        tandem_binary(), source_dir(), kSteps, kCkptEvery, kCkptEvery, kCommTimeout, (dir / "ckpt").string());
    for (int i : {0, 1}) {
      std::string command = fmt::format(
          "env -u SLURM_NNODES -u SLURM_JOB_NUM_NODES -u SLURM_NODEID -u SLURM_NTASKS_PER_NODE -u SLURM_JOB_NODELIST "
          "-u SLURM_NODELIST -u OMP_NUM_THREADS TANDEM_JOB_TOKEN={} {}={} timeout {} {} launch --nnodes 2 "
          "--node-rank {} --master-addr {} --master-port {} --nproc-per-node 2 --backend gloo --max-restarts {} {} "
          "-- {}",
          token, kHostVariable, kAddr[i], kJobTimeout, tandem_binary(), i, kAddr[0], port, max_restarts, launch_flags,
          train);
      // The node's launcher, in its namespace.
      nodes[i].emplace(fmt::format("ip netns exec {} {}", kNs[i], command), dir / fmt::format("node{}.log", i));
    }
    dir_ = dir;
    store_port = port;
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

  std::optional<BackgroundProcess> nodes[2];
  int store_port = 0;
  fs::path dir_;
};

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

double seconds_between(Clock::time_point a, Clock::time_point b) { return Seconds(b - a).count(); }

}  // namespace

TEST_CASE("two nodes in network namespaces: a cut link is detected and a restarted job matches", "[e2e][netns]") {
  if (std::string why = skip_reason(); !why.empty()) {
    WARN("SKIPPED: " << why);
    fmt::print(stderr, "[netns] SKIPPED: {}\n", why);  // Catch2 v2 shows WARN only with -s or on failure
    return;
  }
  Namespaces namespaces;
  fs::path work = fs::temp_directory_path() / fmt::format("tandem-netns-{}", fresh_seed());
  struct Cleanup {
    fs::path dir;
    ~Cleanup() { fs::remove_all(dir); }
  } cleanup{work};

  // (1) The uninterrupted job: the reference for (3).
  Job reference(work / "reference", /*max_restarts=*/0);
  {
    auto [a, b] = reference.finish();
    INFO(reference.outputs());
    REQUIRE(a == 0);
    REQUIRE(b == 0);
    REQUIRE(fs::exists(reference.final_model()));
  }

  // (2) Cutting the link for good fails both launchers, naming the cause.
  {
    Job job(work / "cut", /*max_restarts=*/0, fmt::format("--node-timeout {}", kNodeTimeout));
    job.await_checkpoint(kCutAfterStep);
    set_link(1, /*up=*/false);
    auto cut = Clock::now();
    // Note [Detection bounds]: node 1's store requests go unanswered.
    std::optional<int> b = job.nodes[1]->wait_until(cut + std::chrono::seconds(kNode1Bound + kSlack));
    std::optional<int> a = job.nodes[0]->wait_until(cut + std::chrono::seconds(kNode0Bound));
    INFO(job.outputs());
    REQUIRE(b.has_value());
    REQUIRE(a.has_value());
    double node0 = seconds_between(cut, job.nodes[0]->exited()), node1 = seconds_between(cut, job.nodes[1]->exited());
    WARN(fmt::format("after the cut, node 0's launcher exited in {:.1f} s (bound {} s), node 1's in {:.1f} s (bound "
                     "{} s)",
                     node0, kNode0Bound, node1, kNode1Bound));
    CHECK(*a != 0);
    CHECK(*b != 0);
    CHECK(node1 <= kNode1Bound);
    // The collective's own timeout, the watchdog's line if it fires first,
    // or the launcher's if node 1's heartbeats are missed first.
    std::string out0 = job.nodes[0]->output();
    CHECK((contains(out0, fmt::format("did not complete within {} ms", kCommTimeout * 1000)) ||
           contains(out0, "watchdog: gloo") || contains(out0, "tandem launch: node 1 lost: no heartbeat")));
    CHECK(contains(job.nodes[1]->output(),
                   fmt::format("lost the store at 10.77.0.1:{}: no reply within", job.store_port)));
    set_link(1, /*up=*/true);  // for (3)
  }

  // (3) With restarts and the link mended, the job completes equal to (1).
  {
    Job job(work / "restart", /*max_restarts=*/2);
    job.await_checkpoint(kCutAfterStep);
    set_link(1, /*up=*/false);
    // Mend the link once node 0 has seen the failure and waits for node 1
    // to meet it for the restart.
    auto deadline = Clock::now() + std::chrono::seconds(kNode0Bound);
    while (!contains(job.nodes[0]->output(), "restarting the job") && Clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    set_link(1, /*up=*/true);
    INFO(job.outputs());
    REQUIRE(contains(job.nodes[0]->output(), "restarting the job (restart 1 of 2)"));
    auto [a, b] = job.finish();
    INFO(job.outputs());
    REQUIRE(a == 0);
    REQUIRE(b == 0);
    ShellResult same = run_shell(fmt::format("timeout 10 cmp {} {} 2>&1", reference.final_model().string(),
                                             job.final_model().string()));
    INFO(same.output);
    REQUIRE(same.exit_code == 0);
  }
}
