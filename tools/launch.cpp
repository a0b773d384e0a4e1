// tandem launch: runs a command as N workers per node, torchrun-style.
//
//   tandem launch [--nproc-per-node N|gpu|cpu|auto] [--nnodes N --node-rank I
//                 --master-addr H --master-port P] [--backend nccl|gloo]
//                 [--max-restarts 0] -- command args...
//
// Node 0's launcher serves the TCP store the workers rendezvous on; every
// launcher starts its workers (workers.h), relays their output, and watches
// them. The first failure anywhere ends the job: a launcher whose worker
// fails (or that gets a signal) publishes "launch/failed" in the store,
// stops its workers, and every other launcher, polling that key, stops its
// own. Node 0 keeps the store up until every launcher has counted itself in
// "launch/done", so no worker loses the store while it still needs it.
// Exit code: 0 when every worker succeeded, else the first failure's code
// (128 + signal for a worker killed by one, or for a launcher stopped by one).
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <thread>

#include "collectives/tcp_store.h"
#include "runtime/core/device.h"
#include "runtime/core/error.h"
#include "tools/commands.h"
#include "tools/slurm.h"
#include "tools/workers.h"

namespace tandem::tools {

namespace {

using collectives::Store;
using Clock = std::chrono::steady_clock;

constexpr int kDefaultMasterPort = 29500;
constexpr Millis kStopGrace{10000};          // SIGTERM -> SIGKILL
constexpr Millis kJoinTimeout{300000};       // for every node's launcher to join
constexpr Millis kTick{20};                  // how often workers and signals are checked
constexpr Millis kStorePoll{200};            // how often "launch/failed" is checked
constexpr Millis kHeartbeat{1000};           // how often a launcher says it is alive
constexpr Millis kPeerSilence{30000};        // a launcher silent this long is gone
constexpr Millis kFailureAckTimeout{10000};  // after a failure, for the others to notice
constexpr Millis kOutputDrain{2000};         // for pipes a worker's children hold open
constexpr Millis kNoLimit = std::chrono::hours(24 * 365);  // node 0 waits on heartbeats, not a clock

struct LaunchArgs {
  std::string nproc_per_node;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = kDefaultMasterPort;
  std::string backend;
  int max_restarts = 0;
  std::vector<std::string> command;
  CLI::Option *nproc_opt = nullptr, *nnodes_opt = nullptr, *node_rank_opt = nullptr, *addr_opt = nullptr,
              *port_opt = nullptr;
};

// The settings once flags, Slurm and defaults are combined.
struct LaunchPlan {
  int nproc = 1, nnodes = 1, node_rank = 0, master_port = kDefaultMasterPort, max_restarts = 0;
  bool port_given = false;  // else one node may move off a busy default port
  std::string master_addr, backend, token, host;
};

int parse_nproc(const std::string& text) {
  if (text == "gpu") {
    int gpus = cuda_device_count();
    if (gpus == 0) throw UserError("--nproc-per-node gpu: no CUDA GPU is visible; give a number, 'cpu' or 'auto'");
    return gpus;
  }
  if (text == "cpu") return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (text == "auto") return std::max(1, cuda_device_count());
  if (!text.empty() && text.size() <= 6 && text.find_first_not_of("0123456789") == std::string::npos &&
      std::stoi(text) > 0)
    return std::stoi(text);
  throw UserError(fmt::format("--nproc-per-node '{}': expected a positive number, 'gpu', 'cpu' or 'auto'", text));
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.starts_with("127.");
}

LaunchPlan resolve_plan(const LaunchArgs& a) {
  if (a.max_restarts != 0)
    throw UserError(fmt::format("--max-restarts {}: restarting the job is not implemented yet; use 0 (the default)",
                                a.max_restarts));
  if (a.command.empty()) throw UserError("no command to run: tandem launch [options] -- <command> [args...]");
  bool all_given = a.nproc_opt->count() && a.nnodes_opt->count() && a.node_rank_opt->count() && a.addr_opt->count();
  SlurmJob slurm = all_given ? SlurmJob{} : read_slurm_env();

  LaunchPlan p;
  p.nproc = a.nproc_opt->count() ? parse_nproc(a.nproc_per_node) : slurm.nproc_per_node.value_or(1);
  p.nnodes = a.nnodes_opt->count() ? a.nnodes : slurm.nnodes.value_or(1);
  p.node_rank = a.node_rank_opt->count() ? a.node_rank : slurm.node_rank.value_or(0);
  // One node serves and reaches its own store on loopback, whatever Slurm lists.
  p.master_addr = a.master_addr;
  if (!a.addr_opt->count() && p.nnodes > 1 && slurm.nodelist) p.master_addr = first_slurm_host(*slurm.nodelist);
  p.master_port = a.master_port;
  p.port_given = a.port_opt->count() > 0;
  p.backend = !a.backend.empty() ? a.backend : cuda_device_count() > 0 ? "nccl" : "gloo";
  p.max_restarts = a.max_restarts;
  if (p.nnodes < 1) throw UserError(fmt::format("--nnodes {}: needs at least 1 node", p.nnodes));
  if (p.node_rank < 0 || p.node_rank >= p.nnodes)
    throw UserError(
        fmt::format("--node-rank {} is outside 0..{} for --nnodes {}", p.node_rank, p.nnodes - 1, p.nnodes));
  if (p.master_port < 0 || p.master_port > 65535 || (p.master_port == 0 && p.nnodes > 1))
    throw UserError(
        fmt::format("--master-port {}: expected 1..65535 (0, a free port, only on one node)", p.master_port));
  if (p.backend != "nccl" && p.backend != "gloo")
    throw UserError(fmt::format("--backend '{}': expected nccl or gloo", p.backend));
  if (const char* token = std::getenv("TANDEM_JOB_TOKEN"); token && *token) {
    p.token = token;
  } else if (p.nnodes > 1) {
    throw UserError(fmt::format(
        "a job on {} nodes needs TANDEM_JOB_TOKEN set to the same secret on every node "
        "(e.g. export TANDEM_JOB_TOKEN=$(openssl rand -hex 16)); it authenticates the store",
        p.nnodes));
  } else {
    p.token = collectives::generate_job_token();
  }
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  p.host = host;
  return p;
}

Env worker_env(const LaunchPlan& p, int port, int local_rank) {
  Env env = {
      {"RANK", std::to_string(p.node_rank * p.nproc + local_rank)},
      {"LOCAL_RANK", std::to_string(local_rank)},
      {"WORLD_SIZE", std::to_string(p.nnodes * p.nproc)},
      {"LOCAL_WORLD_SIZE", std::to_string(p.nproc)},
      {"GROUP_RANK", std::to_string(p.node_rank)},
      {"GROUP_WORLD_SIZE", std::to_string(p.nnodes)},
      {"MASTER_ADDR", p.master_addr},
      {"MASTER_PORT", std::to_string(port)},
      {"TANDEM_JOB_TOKEN", p.token},
      {"TANDEM_BACKEND", p.backend},
      {"TANDEM_RESTART_COUNT", "0"},
      {"TANDEM_MAX_RESTARTS", std::to_string(p.max_restarts)},
  };
  // CPU workers share the cores: one OpenMP/OpenBLAS thread each unless told.
  if (p.backend == "gloo" && p.nproc > 1 && !std::getenv("OMP_NUM_THREADS")) env.push_back({"OMP_NUM_THREADS", "1"});
  return env;
}

// Waits for one launcher per node rank and checks that they agree.
void rendezvous(Store& store, const LaunchPlan& p) {
  std::string me = fmt::format("{} {} {}", p.nproc, p.host, getpid());
  std::string held = collectives::to_string(
      store.compare_set(fmt::format("launch/node/{}", p.node_rank), {}, collectives::to_bytes(me)));
  if (held != me)
    throw UserError(fmt::format(
        "node rank {} is already taken (nproc, host, pid: {}); give each node its own --node-rank", p.node_rank, held));
  std::vector<std::string> keys;
  for (int i = 0; i < p.nnodes; i++) keys.push_back(fmt::format("launch/node/{}", i));
  auto start = Clock::now();
  bool told = false;
  while (!store.check(keys)) {
    if (Clock::now() - start > kJoinTimeout) {
      std::string missing;
      for (const auto& k : keys)
        if (!store.check({k})) missing += " " + k.substr(k.rfind('/') + 1);
      throw UserError(fmt::format("node ranks{} did not join {}:{} within {} s; start one launcher per node",
                                  missing, p.master_addr, p.master_port, kJoinTimeout.count() / 1000));
    }
    if (!told && Clock::now() - start > Millis(10000)) {
      write_locked(2, fmt::format("tandem launch: waiting for all {} nodes to join {}:{}\n", p.nnodes,
                                  p.master_addr, p.master_port));
      told = true;
    }
    std::this_thread::sleep_for(kStorePoll);
  }
  for (int i = 0; i < p.nnodes; i++) {
    std::string other = collectives::to_string(store.get(keys[i], kJoinTimeout));
    if (std::atoi(other.c_str()) != p.nproc)
      throw UserError(fmt::format("node {} has --nproc-per-node {} but node {} has {} (nproc, host, pid: {}); every "
                                  "node needs the same",
                                  p.node_rank, p.nproc, i, std::atoi(other.c_str()), other));
  }
}

// One node's launcher, from its workers' start to its exit code.
class Launcher {
 public:
  Launcher(const LaunchPlan& plan, std::shared_ptr<Store> store) : p_(plan), store_(std::move(store)) {}

  int run(WorkerGroup& group) {
    supervise(group);
    if (!failure_.empty()) {
      publish_failure();
      report_done();
      int sig = signal_ ? signal_ : SIGTERM;
      int seen = signals_received();
      group.stop(sig, kStopGrace, [seen] { return signals_received() > seen; });
    } else {
      report_done();
    }
    if (p_.node_rank == 0 && store_ && !peer_lost_) wait_for_nodes(failure_.empty() ? kNoLimit : kFailureAckTimeout);
    group.finish_output(kOutputDrain);
    if (failure_.empty()) return 0;
    write_locked(2, fmt::format("tandem launch: {}\n", failure_));
    return code_ != 0 ? code_ : 1;
  }

 private:
  void fail(int code, std::string why) {
    if (!failure_.empty()) return;
    code_ = code;
    failure_ = std::move(why);
  }

  bool got_signal() {
    if (signals_received() == 0 || !failure_.empty()) return !failure_.empty();
    signal_ = last_signal();
    fail(128 + signal_, p_.nnodes > 1 ? fmt::format("the launcher on {} (node {}) received {}; stopped its workers",
                                                    p_.host, p_.node_rank, signal_name(signal_))
                                      : fmt::format("received {}; stopped the workers", signal_name(signal_)));
    return true;
  }

  void supervise(WorkerGroup& group) {
    auto next_poll = Clock::now();
    while (true) {
      for (const ExitCause& c : group.reap())
        if (c.failed()) fail(c.exit_code(), c.describe(p_.nnodes > 1 ? p_.host : ""));
      if (got_signal() || !failure_.empty() || group.all_exited()) return;
      if (store_ && Clock::now() >= next_poll) {
        next_poll = Clock::now() + kStorePoll;
        poll_store();
        if (!failure_.empty()) return;
      }
      std::this_thread::sleep_for(kTick);
    }
  }

  // Another node's failure, this node's heartbeat, node 0's watch on the others.
  void poll_store() {
    try {
      if (store_->check({"launch/failed"})) {
        remote_failure_ = true;
        take_published_failure();
        return;
      }
      if (Clock::now() < next_heartbeat_) return;
      next_heartbeat_ = Clock::now() + kHeartbeat;
      if (p_.node_rank != 0) store_->add(fmt::format("launch/alive/{}", p_.node_rank), 1);
      if (p_.node_rank == 0) watch_peers();
    } catch (const std::exception& e) {
      lose_store(e);
    }
  }

  void take_published_failure() {
    std::string value = collectives::to_string(store_->get("launch/failed", kStorePoll * 10));
    size_t space = value.find(' ');
    code_ = std::atoi(value.substr(0, space).c_str());
    failure_ = space == std::string::npos ? value : value.substr(space + 1);
  }

  void lose_store(const std::exception& e) {
    store_.reset();
    fail(1, fmt::format("lost the store at {}:{} (did node 0's launcher stop?): {}", p_.master_addr, p_.master_port,
                        e.what()));
  }

  // Node 0: fails the job when a node still running has stopped reporting.
  void watch_peers() {
    if (alive_.empty()) {
      alive_.assign(p_.nnodes, -1);
      changed_.assign(p_.nnodes, Clock::now());
    }
    for (int i = 1; i < p_.nnodes; i++) {
      if (store_->check({fmt::format("launch/done/{}", i)})) continue;
      int64_t n = store_->add(fmt::format("launch/alive/{}", i), 0);
      if (n != alive_[i]) {
        alive_[i] = n;
        changed_[i] = Clock::now();
      } else if (Clock::now() - changed_[i] > kPeerSilence) {
        fail(1, fmt::format("the launcher of node {} stopped reporting for {} s; its workers' outcome is unknown", i,
                            kPeerSilence.count() / 1000));
        peer_lost_ = true;
        return;
      }
    }
  }

  // The first failure published wins; a later one adopts it.
  void publish_failure() {
    if (!store_ || remote_failure_) return;
    try {
      std::string mine = fmt::format("{} {}", code_, failure_);
      std::string held = collectives::to_string(
          store_->compare_set("launch/failed", {}, collectives::to_bytes(mine)));
      if (held != mine) take_published_failure();
    } catch (const std::exception&) {
      store_.reset();  // keep our own cause: it is what happened here
    }
  }

  void report_done() {
    if (!store_) return;
    try {
      store_->set(fmt::format("launch/done/{}", p_.node_rank), collectives::to_bytes("1"));
      store_->add("launch/done", 1);
    } catch (const std::exception& e) {
      lose_store(e);
    }
  }

  // Node 0: serves the store until every launcher is done, a failure has
  // had `limit` to spread, a launcher went silent, or a signal arrives.
  void wait_for_nodes(Millis limit) {
    auto deadline = Clock::now() + limit;
    int seen = signals_received();
    try {
      while (store_->add("launch/done", 0) < p_.nnodes && Clock::now() < deadline) {
        if (!failure_.empty()) {
          if (signals_received() > seen) return;
        } else if (got_signal()) {
          publish_failure();
          seen = signals_received();  // a second one stops the wait
          deadline = Clock::now() + kFailureAckTimeout;
        } else if (store_->check({"launch/failed"})) {
          take_published_failure();
          deadline = Clock::now() + kFailureAckTimeout;
        } else if (Clock::now() >= next_heartbeat_) {
          next_heartbeat_ = Clock::now() + kHeartbeat;
          watch_peers();
          if (peer_lost_) return publish_failure();
        }
        std::this_thread::sleep_for(kStorePoll);
      }
    } catch (const std::exception& e) {
      fail(1, fmt::format("the store failed while waiting for the other nodes: {}", e.what()));
    }
  }

  LaunchPlan p_;
  std::shared_ptr<Store> store_;
  std::string failure_;  // the job's first failure; empty while all is well
  int code_ = 0;
  int signal_ = 0;  // the signal the launcher got, when that is the failure
  bool remote_failure_ = false;
  bool peer_lost_ = false;  // a launcher went silent: nobody is left to wait for
  Clock::time_point next_heartbeat_ = Clock::now();
  std::vector<int64_t> alive_;
  std::vector<Clock::time_point> changed_;
};

int run_launch(const LaunchArgs& args) {
  LaunchPlan p = resolve_plan(args);
  std::unique_ptr<collectives::TcpStoreServer> server;
  int port = p.master_port;
  if (p.node_rank == 0) {
    std::string bind = p.nnodes == 1 && is_loopback(p.master_addr) ? "127.0.0.1" : "0.0.0.0";
    try {
      server = std::make_unique<collectives::TcpStoreServer>(bind, port, p.token);
    } catch (const std::exception& e) {
      // One node with the default port: nobody else needs to find the store
      // there, so a busy 29500 (another job) is no reason to fail.
      if (p.nnodes > 1 || p.port_given) throw UserError(fmt::format("--master-port {}: {}", port, e.what()));
      server = std::make_unique<collectives::TcpStoreServer>(bind, 0, p.token);
    }
    port = server->port();
  }
  std::shared_ptr<Store> store;
  if (p.nnodes > 1) {
    store = collectives::connect_tcp_store(p.node_rank == 0 ? "127.0.0.1" : p.master_addr, port, p.token, kJoinTimeout);
    rendezvous(*store, p);
  }
  std::vector<WorkerSpec> specs;
  for (int local = 0; local < p.nproc; local++)
    specs.push_back({.rank = p.node_rank * p.nproc + local, .env = worker_env(p, port, local)});
  install_launcher_signal_handlers();
  WorkerGroup group(args.command, specs);
  return Launcher(p, store).run(group);
}

}  // namespace

void add_launch_command(CLI::App& app) {
  auto args = std::make_shared<LaunchArgs>();
  CLI::App* cmd = app.add_subcommand("launch", "Run a command as N workers per node (torchrun-compatible)");
  args->nproc_opt = cmd->add_option("--nproc-per-node,--nproc_per_node", args->nproc_per_node,
                                    "Workers on this node: a number, gpu, cpu (one per core) or auto "
                                    "(GPUs if any, else 1); default 1, or Slurm's tasks/GPUs per node");
  args->nnodes_opt = cmd->add_option("--nnodes", args->nnodes, "Nodes in the job (default 1, or SLURM_NNODES)");
  args->node_rank_opt =
      cmd->add_option("--node-rank,--node_rank", args->node_rank, "This node's rank, 0..nnodes-1 (or SLURM_NODEID)");
  args->addr_opt = cmd->add_option("--master-addr,--master_addr", args->master_addr,
                                   "Host of node 0, which serves the store (default 127.0.0.1; under Slurm the "
                                   "first host of SLURM_JOB_NODELIST)");
  args->port_opt = cmd->add_option("--master-port,--master_port", args->master_port,
                                   "Port of the store on node 0 (default 29500, or a free one on a single node "
                                   "when 29500 is busy; 0 picks a free one on a single node)");
  cmd->add_option("--backend", args->backend, "nccl or gloo (default: nccl when a GPU is visible, else gloo)");
  cmd->add_option("--max-restarts,--max_restarts", args->max_restarts, "Whole-job restarts (only 0 for now)");
  cmd->add_option("command", args->command, "The command each worker runs; put -- before it");
  cmd->footer(
      "Each worker gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT,\n"
      "TANDEM_JOB_TOKEN and TANDEM_BACKEND; its output lines are prefixed with \"[rank R] \". Jobs on several\n"
      "nodes need TANDEM_JOB_TOKEN set to one secret on every node. Exit code: 0 when every worker succeeds,\n"
      "else the first failure's exit code (128 + signal when it was killed by one).");
  cmd->callback([args] {
    int code = run_launch(*args);
    if (code != 0) std::exit(code);  // the launcher's exit code is the job's; everything is torn down by now
  });
}

}  // namespace tandem::tools
